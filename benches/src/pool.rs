//! multiproc's pool figures, measured as the reference harness's `mp_bench.py` measures
//! CPython's `Pool` (`b_pool`): same names, workloads, counts and timed regions.
//!
//! - `pool.create_close_join.2workers`: `Pool::new(2)`, `close`, `join`; ms per pool (the
//!   workers are started with multiproc's default method, forkserver; mp_bench.py's with fork).
//! - `pool.map.trivial.default_chunksize`: `map(ident, 0..100_000)` with Python's default
//!   chunk size (`ceil(n / (4 × workers))`: 8 chunks of 12,500); tasks/s.
//! - `pool.map.trivial.chunksize1`: `map(ident, 0..10_000)` in chunks of 1; tasks/s.
//! - `pool.apply_async.roundtrip`: `apply_async(noop, ()).get()`, 500 per repetition; us each.
//! - `pool.imap_unordered.trivial.chunksize{1,100}`: every result of
//!   `imap_unordered(ident, 0..n)` (10,000 in chunks of 1, 100,000 in chunks of 100); tasks/s.
//! - `pool.map.cpu200x_sum_range_2e5.{serial,pool2,speedup}`: 200 calls of [`cpu_task`] in
//!   this process (ms), then `map(cpu_task, 0..200)` on the pool (ms), and their ratio (x).
//!
//! - `executor.submit_result.roundtrip`: `ProcessPoolExecutor::submit(noop, ()).result()`, 500
//!   per repetition; us each (mp_bench.py's `b_executor`).
//! - `executor.map.trivial.chunksize{1,1000}`: every result of the executor's
//!   `map(ident, 0..n, chunksize)` (10,000 in chunks of 1, 100,000 in chunks of 1000); tasks/s.
//!
//! The figures of one group share one pool of 2 workers (mp_bench.py uses one pool for all),
//! warmed up with `map(ident, 0..1000)` before the first repetition.

use std::hint::black_box;
use std::rc::Rc;
use std::time::Instant;

use multiproc_pool::{MapOptions, Pool, ProcessPoolExecutor};

use crate::report::{Bench, Family, Res};

// ------------------------------------------------------------- the tasks ----

/// mp_bench.py's `ident`.
pub(crate) fn ident(x: u64) -> u64 {
    x
}

/// mp_bench.py's `noop`.
pub(crate) fn noop(_: ()) {}

/// mp_bench.py's `cpu_task`: `sum(range(200_000))`.
///
/// Each term goes through [`black_box`], so the optimizer can neither fold the sum into
/// `n(n-1)/2` nor vectorise it: the loop adds 200,000 numbers one by one (about 70 µs here,
/// against about 2.7 ms for CPython's `sum(range(200_000))`). The figure is then what it is in
/// Python: 200 tasks of equal, pure CPU work, long enough that the pool's overhead per task is
/// small, split over two workers.
///
/// Never inlined, and called through [`cpu_task_fn`] on the serial side: the serial loop, the
/// workers and the raw speed-up's processes all run this one copy of the machine code. (An
/// inlined copy kept its `black_box` slot at another stack offset and ran about twice as fast
/// per term as the out-of-line copy the workers run, which made the speed-up read 0.8–1.0.)
#[inline(never)]
pub(crate) fn cpu_task(_: u64) -> u64 {
    (0..200_000u64).map(black_box).sum()
}

/// [`cpu_task`] through a function pointer the optimizer cannot see through.
pub(crate) fn cpu_task_fn() -> fn(u64) -> u64 {
    black_box(cpu_task as fn(u64) -> u64)
}

/// The CPU tasks of one `pool.map.cpu200x_sum_range_2e5` repetition.
pub(crate) const CPU_ITEMS: u64 = 200;

/// A pool of 2 workers (multiproc's default start method), warmed up as mp_bench.py warms its
/// pool up.
pub(crate) fn new_pool() -> Res<Rc<Pool>> {
    let pool = Pool::new(2)?;
    let warm = pool.map(ident, 0..1000)?;
    if warm.len() != 1000 {
        return Err("pool warm-up: missing results".into());
    }
    Ok(Rc::new(pool))
}

// ---------------------------------------------------------- create+join ----

struct CreateCloseJoin {
    n: usize,
}

impl Bench for CreateCloseJoin {
    fn name(&self) -> String {
        "pool.create_close_join.2workers".into()
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
            let pool = Pool::new(2)?;
            pool.close();
            pool.join()?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e3)
    }
}

/// `pool.create_close_join.2workers`: `n` pools per repetition.
pub(crate) fn create_close_join(n: usize) -> Box<dyn Bench> {
    Box::new(CreateCloseJoin { n })
}

// ------------------------------------------------------------------ map ----

/// How a trivial map is run.
#[derive(Clone, Copy, Debug)]
pub(crate) enum MapKind {
    /// `map` with the default chunk size.
    Map,
    /// `imap_unordered`, every result taken.
    ImapUnordered,
}

struct MapTrivial {
    pool: Rc<Pool>,
    kind: MapKind,
    n: u64,
    chunksize: Option<usize>,
}

impl Bench for MapTrivial {
    fn name(&self) -> String {
        let cs = match self.chunksize {
            None => "default_chunksize".to_string(),
            Some(c) => format!("chunksize{c}"),
        };
        match self.kind {
            MapKind::Map => format!("pool.map.trivial.{cs}"),
            MapKind::ImapUnordered => format!("pool.imap_unordered.trivial.{cs}"),
        }
    }
    fn unit(&self) -> &'static str {
        "tasks/s"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let opts = match self.chunksize {
            None => MapOptions::new(),
            Some(c) => MapOptions::new().chunksize(c),
        };
        let t0 = Instant::now();
        let got = match self.kind {
            MapKind::Map => self.pool.map_with(ident, 0..self.n, opts)?.len() as u64,
            MapKind::ImapUnordered => {
                let mut k = 0u64;
                for r in self.pool.imap_unordered_with(ident, 0..self.n, opts) {
                    r?;
                    k += 1;
                }
                k
            }
        };
        let dt = t0.elapsed().as_secs_f64();
        if got != self.n {
            return Err(format!("{}: {got} results for {} tasks", self.name(), self.n).into());
        }
        Ok(self.n as f64 / dt)
    }
}

/// `pool.map.trivial.*` / `pool.imap_unordered.trivial.*`: `n` `ident` tasks per repetition,
/// in chunks of `chunksize` (`None`: `map`'s default).
pub(crate) fn map_trivial(
    pool: &Rc<Pool>,
    kind: MapKind,
    n: u64,
    chunksize: Option<usize>,
) -> Box<dyn Bench> {
    Box::new(MapTrivial {
        pool: Rc::clone(pool),
        kind,
        n,
        chunksize,
    })
}

// ---------------------------------------------------------------- apply ----

struct ApplyRoundTrip {
    pool: Rc<Pool>,
    n: usize,
}

impl Bench for ApplyRoundTrip {
    fn name(&self) -> String {
        "pool.apply_async.roundtrip".into()
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        for _ in 0..self.n {
            self.pool.apply_async(noop, ())?.get()?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e6)
    }
}

/// `pool.apply_async.roundtrip`: `n` `apply_async(noop).get()` per repetition.
pub(crate) fn apply_roundtrip(pool: &Rc<Pool>, n: usize) -> Box<dyn Bench> {
    Box::new(ApplyRoundTrip {
        pool: Rc::clone(pool),
        n,
    })
}

// ------------------------------------------------------------------ cpu ----

struct CpuMap {
    pool: Rc<Pool>,
    items: u64,
}

impl Bench for CpuMap {
    fn name(&self) -> String {
        "pool.map.cpu200x_sum_range_2e5".into()
    }
    fn names(&self) -> Vec<String> {
        ["serial", "pool2", "speedup"]
            .iter()
            .map(|s| format!("{}.{s}", self.name()))
            .collect()
    }
    fn unit(&self) -> &'static str {
        "ms"
    }
    fn units(&self) -> Vec<&'static str> {
        vec!["ms", "ms", "x"]
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure_all(&mut self) -> Res<Vec<f64>> {
        let task = cpu_task_fn();
        let t0 = Instant::now();
        let mut serial = 0u64;
        for i in 0..self.items {
            serial = serial.wrapping_add(task(i));
        }
        let ts = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let out = self.pool.map(cpu_task, 0..self.items)?;
        let tp = t0.elapsed().as_secs_f64();
        let pooled = out.iter().fold(0u64, |a, &x| a.wrapping_add(x));
        if pooled != serial {
            return Err(format!("{}: the pool's sum differs", self.name()).into());
        }
        Ok(vec![ts * 1e3, tp * 1e3, ts / tp])
    }
}

/// `pool.map.cpu200x_sum_range_2e5.{serial,pool2,speedup}`: `items` CPU tasks serially, then
/// through `map` on the pool.
pub(crate) fn cpu_map(pool: &Rc<Pool>, items: u64) -> Box<dyn Bench> {
    Box::new(CpuMap {
        pool: Rc::clone(pool),
        items,
    })
}

// ------------------------------------------------------------- executor ----

/// An executor of 2 workers (multiproc's default start method), warmed up as mp_bench.py
/// warms its executor up (`list(ex.map(ident, range(100)))`).
pub(crate) fn new_executor() -> Res<Rc<ProcessPoolExecutor>> {
    let ex = ProcessPoolExecutor::new(2)?;
    let mut k = 0;
    for r in ex.map(ident, 0..100, 1)? {
        r?;
        k += 1;
    }
    if k != 100 {
        return Err("executor warm-up: missing results".into());
    }
    Ok(Rc::new(ex))
}

struct SubmitRoundTrip {
    ex: Rc<ProcessPoolExecutor>,
    n: usize,
}

impl Bench for SubmitRoundTrip {
    fn name(&self) -> String {
        "executor.submit_result.roundtrip".into()
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        for _ in 0..self.n {
            self.ex.submit(noop, ())?.result()?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e6)
    }
}

/// `executor.submit_result.roundtrip`: `n` `submit(noop).result()` per repetition.
pub(crate) fn submit_roundtrip(ex: &Rc<ProcessPoolExecutor>, n: usize) -> Box<dyn Bench> {
    Box::new(SubmitRoundTrip {
        ex: Rc::clone(ex),
        n,
    })
}

struct ExecutorMap {
    ex: Rc<ProcessPoolExecutor>,
    n: u64,
    chunksize: usize,
}

impl Bench for ExecutorMap {
    fn name(&self) -> String {
        format!("executor.map.trivial.chunksize{}", self.chunksize)
    }
    fn unit(&self) -> &'static str {
        "tasks/s"
    }
    fn family(&self) -> Family {
        Family::Multiproc
    }
    fn measure(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        let mut k = 0u64;
        for r in self.ex.map(ident, 0..self.n, self.chunksize)? {
            r?;
            k += 1;
        }
        let dt = t0.elapsed().as_secs_f64();
        if k != self.n {
            return Err(format!("{}: {k} results for {} tasks", self.name(), self.n).into());
        }
        Ok(self.n as f64 / dt)
    }
}

/// `executor.map.trivial.chunksize<c>`: every result of `map(ident, 0..n, c)`.
pub(crate) fn executor_map(
    ex: &Rc<ProcessPoolExecutor>,
    n: u64,
    chunksize: usize,
) -> Box<dyn Bench> {
    Box::new(ExecutorMap {
        ex: Rc::clone(ex),
        n,
        chunksize,
    })
}
