//! `ProcessPoolExecutor` under every start method: submit and result, `as_completed`, `wait`,
//! `cancel`, done callbacks, `map`, a worker killed in the middle of a call,
//! `max_tasks_per_child`, `shutdown`.
//!
//! `harness = false`: one test thread, trials on the main thread, so fork is allowed. Calls
//! that must stay running block until the test creates a file they wait for (a handle with a
//! file descriptor, such as an `Event`, cannot pass through the executor's rings: see
//! `handles_with_fds_are_refused`); the test waits for them with `running()` polled under a
//! deadline. No sleep orders anything.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use multiproc_core::StartMethod;
use multiproc_pool::{
    AnyFuture, Future, PoolError, ProcessPoolExecutor, WaitMode, as_completed, wait,
};
use multiproc_testkit::{Failed, LONG, TestFn, check};

fn main() {
    let tests: &[(&str, TestFn)] = &[
        ("submit_and_result", submit_and_result),
        (
            "as_completed_yields_every_future_once",
            as_completed_yields_every_future_once,
        ),
        (
            "as_completed_times_out_on_a_blocked_call",
            as_completed_times_out_on_a_blocked_call,
        ),
        (
            "cancel_queued_succeeds_running_and_finished_fail",
            cancel_queued_succeeds_running_and_finished_fail,
        ),
        ("wait_first_completed_and_all", wait_first_completed_and_all),
        ("wait_first_exception", wait_first_exception),
        (
            "killed_worker_fails_its_future_and_the_executor_recovers",
            killed_worker_fails_its_future_and_the_executor_recovers,
        ),
        (
            "max_tasks_per_child_gives_fresh_pids",
            max_tasks_per_child_gives_fresh_pids,
        ),
        (
            "shutdown_wait_completes_pending_and_leaves_no_process",
            shutdown_wait_completes_pending_and_leaves_no_process,
        ),
        (
            "shutdown_cancel_futures_cancels_the_queued",
            shutdown_cancel_futures_cancels_the_queued,
        ),
        (
            "exception_holds_the_panic_message",
            exception_holds_the_panic_message,
        ),
        (
            "done_callbacks_run_exactly_once",
            done_callbacks_run_exactly_once,
        ),
        ("map_returns_results_in_order", map_returns_results_in_order),
        (
            "map_timeout_ends_and_cancels_the_rest",
            map_timeout_ends_and_cancels_the_rest,
        ),
        (
            "initializer_runs_in_each_worker",
            initializer_runs_in_each_worker,
        ),
        (
            "kill_workers_fails_pending_futures",
            kill_workers_fails_pending_futures,
        ),
        ("handles_with_fds_are_refused", handles_with_fds_are_refused),
    ];
    multiproc_testkit::run(multiproc_testkit::trials(tests))
}

// ---------------------------------------------------------------------- tasks

fn square(n: u64) -> u64 {
    n * n
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn nap_then_return((i, ms): (u32, u64)) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    i
}

fn boom(n: u32) -> u32 {
    panic!("boom {n}")
}

/// Blocks until the file `path` exists (the test's release), then returns the worker's pid.
fn block(path: String) -> u32 {
    let deadline = Instant::now() + 2 * LONG;
    while !std::path::Path::new(&path).exists() {
        assert!(Instant::now() < deadline, "never released");
        std::thread::sleep(Duration::from_millis(2));
    }
    std::process::id()
}

static GREETING: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn setup(greeting: String) {
    GREETING
        .set(greeting)
        .expect("the initializer runs once per worker");
}

fn greeting(_: ()) -> String {
    GREETING.get().cloned().unwrap_or_default()
}

fn takes_event(e: multiproc_sync::Event) -> bool {
    e.is_set()
}

// ---------------------------------------------------------------------- helpers

fn executor(m: StartMethod, workers: usize) -> Result<ProcessPoolExecutor, Failed> {
    Ok(ProcessPoolExecutor::builder()
        .max_workers(workers)
        .start_method(m)
        .build()?)
}

/// A release file for `block`, removed when dropped.
struct Gate(PathBuf);

impl Gate {
    fn new(name: &str, m: StartMethod) -> Gate {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "multiproc-executor-{}-{name}-{m}-{}",
            std::process::id(),
            N.fetch_add(1, SeqCst)
        ));
        let _ = std::fs::remove_file(&p);
        Gate(p)
    }

    fn path(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    fn open(&self) -> Result<(), Failed> {
        std::fs::write(&self.0, b"go")?;
        Ok(())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Polls `cond` until it holds, with the [`LONG`] deadline.
fn until(what: &str, cond: impl Fn() -> bool) -> Result<(), Failed> {
    let deadline = Instant::now() + LONG;
    while !cond() {
        check!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn result<T: Send + 'static>(f: &Future<T>) -> Result<T, PoolError> {
    f.result_timeout(LONG)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

// ---------------------------------------------------------------------- tests

fn submit_and_result(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 2)?;
    let f = ex.submit(square, 12)?;
    check!(result(&f)? == 144, "square(12)");
    check!(
        f.done() && !f.running() && !f.cancelled(),
        "state after result: {f:?}"
    );
    check!(f.exception().is_none(), "no exception");
    check!(
        matches!(result(&f), Err(PoolError::ResultTaken)),
        "a value is handed out once"
    );
    let g = ex.submit(|s: String| s.repeat(2), "ab".to_string())?;
    check!(g.result()? == "abab", "a closure with a String");
    let pids = ex.pids();
    check!(pids.len() == 2, "two workers: {pids:?}");
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ProcessPoolExecutor>();
    send_sync::<Future<Vec<String>>>();
    Ok(())
}

fn as_completed_yields_every_future_once(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 2)?;
    let futures = (0..20u32)
        .map(|i| ex.submit(nap_then_return, (i, u64::from(i * 7 % 5) * 10)))
        .collect::<Result<Vec<_>, _>>()?;
    // By reference, with a repeat: each future once.
    let mut seen = HashSet::new();
    let with_repeat = futures.iter().chain(std::iter::once(&futures[3]));
    for f in as_completed(with_repeat, Some(LONG)) {
        let f = f?;
        check!(f.done(), "yielded before done");
        check!(seen.insert(f as *const Future<u32>), "yielded twice");
    }
    check!(seen.len() == 20, "{} of 20 yielded", seen.len());
    // By value: the results, each once.
    let mut got = Vec::new();
    for f in as_completed(futures, Some(LONG)) {
        got.push(f?.result()?);
    }
    got.sort_unstable();
    check!(got == (0..20).collect::<Vec<u32>>(), "results: {got:?}");
    Ok(())
}

fn as_completed_times_out_on_a_blocked_call(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 2)?;
    let gate = Gate::new("ac-timeout", m);
    let blocked = ex.submit(block, gate.path())?;
    let quick = ex.submit(square, 3)?;
    // Done before the short deadline starts: no timing assumption.
    check!(quick.exception_timeout(LONG)?.is_none(), "the quick call");
    until("the blocker runs", || blocked.running())?;
    let both: [&dyn AnyFuture; 2] = [&blocked, &quick];
    let mut it = as_completed(both, Some(Duration::from_millis(300)));
    check!(matches!(it.next(), Some(Ok(_))), "the quick one first");
    check!(
        matches!(it.next(), Some(Err(PoolError::WaitTimeout))),
        "then a timeout"
    );
    check!(it.next().is_none(), "then the end");
    drop(it);
    gate.open()?;
    check!(result(&blocked).is_ok(), "the blocked call ends");
    Ok(())
}

fn cancel_queued_succeeds_running_and_finished_fail(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 2)?;
    let gate = Gate::new("cancel", m);
    let blockers = [
        ex.submit(block, gate.path())?,
        ex.submit(block, gate.path())?,
    ];
    until("both blockers run", || blockers.iter().all(Future::running))?;
    let queued = ex.submit(square, 5)?;
    check!(!queued.running() && !queued.done(), "queued: {queued:?}");
    let called = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&called);
    queued.add_done_callback(move |r| {
        assert!(matches!(r, Err(PoolError::Cancelled)));
        c.fetch_add(1, SeqCst);
    });
    check!(queued.cancel(), "cancel of a queued call");
    check!(queued.cancel(), "cancel again is still true");
    check!(queued.cancelled() && queued.done(), "state: {queued:?}");
    check!(called.load(SeqCst) == 1, "the callback ran once, at once");
    check!(
        matches!(queued.exception(), Some(PoolError::Cancelled)),
        "exception of a cancelled future"
    );
    check!(!blockers[0].cancel(), "cancel of a running call");
    check!(!blockers[0].cancelled(), "still not cancelled");
    gate.open()?;
    for b in &blockers {
        check!(result(b).is_ok(), "a blocker ends");
        check!(!b.cancel() && !b.cancelled(), "cancel of a finished call");
    }
    check!(
        matches!(queued.result(), Err(PoolError::Cancelled)),
        "a cancelled future's result"
    );
    check!(
        ex.submit(square, 6)?.result()? == 36,
        "the executor goes on"
    );
    check!(called.load(SeqCst) == 1, "the callback ran once");
    Ok(())
}

fn wait_first_completed_and_all(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 2)?;
    let gate = Gate::new("wait", m);
    let blocked = ex.submit(block, gate.path())?;
    until("the blocker runs", || blocked.running())?;
    let quick = ex.submit(nap_then_return, (4, 0))?;
    let first = wait([&blocked, &quick], WaitMode::FirstCompleted, Some(LONG));
    check!(
        first.done.len() == 1 && std::ptr::eq(first.done[0], &quick),
        "done: {:?}",
        first.done
    );
    check!(
        first.not_done.len() == 1 && std::ptr::eq(first.not_done[0], &blocked),
        "not done: {:?}",
        first.not_done
    );
    let timed = wait(
        [&blocked, &quick],
        WaitMode::AllCompleted,
        Some(Duration::from_millis(200)),
    );
    check!(
        timed.done.len() == 1 && timed.not_done.len() == 1,
        "a timed-out wait: {timed:?}"
    );
    gate.open()?;
    let all = wait([&blocked, &quick], WaitMode::AllCompleted, Some(LONG));
    check!(
        all.done.len() == 2 && all.not_done.is_empty(),
        "all: {all:?}"
    );
    let none = wait(Vec::<&Future<u64>>::new(), WaitMode::AllCompleted, None);
    check!(none.done.is_empty() && none.not_done.is_empty(), "empty");
    Ok(())
}

fn wait_first_exception(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 2)?;
    let gate = Gate::new("first-exception", m);
    let blocked = ex.submit(block, gate.path())?;
    until("the blocker runs", || blocked.running())?;
    let fine = ex.submit(nap_then_return, (2, 0))?;
    result(&fine)?;
    let failing = ex.submit(boom, 1)?;
    let w = wait(
        [&blocked as &dyn AnyFuture, &fine, &failing],
        WaitMode::FirstException,
        Some(LONG),
    );
    check!(
        w.done.len() == 2 && w.not_done.len() == 1,
        "done: {} not done: {}",
        w.done.len(),
        w.not_done.len()
    );
    check!(
        failing.done() && !blocked.done(),
        "the failure ended the wait"
    );
    gate.open()?;
    // No failure among the rest: like AllCompleted.
    let rest = wait([&blocked, &fine], WaitMode::FirstException, Some(LONG));
    check!(rest.not_done.is_empty(), "all done");
    Ok(())
}

fn killed_worker_fails_its_future_and_the_executor_recovers(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 1)?;
    let gate = Gate::new("kill", m);
    let doomed = ex.submit(block, gate.path())?;
    until("the call runs", || doomed.running())?;
    let queued = ex.submit(square, 3)?;
    let victim = ex.pids()[0];
    let pid = rustix::process::Pid::from_raw(victim as i32).ok_or("pid 0")?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    match result(&doomed) {
        Err(PoolError::WorkerLost { pid, exitcode }) => {
            check!(
                pid == victim && exitcode == -9,
                "lost: pid {pid} exit {exitcode}"
            );
        }
        other => return Err(format!("expected WorkerLost, got {other:?}").into()),
    }
    check!(result(&queued)? == 9, "the queued call runs normally");
    check!(
        ex.submit(square, 4)?.result()? == 16,
        "a later submit works"
    );
    until("a replacement worker", || {
        ex.pids().len() == 1 && ex.pids()[0] != victim
    })?;
    Ok(())
}

fn max_tasks_per_child_gives_fresh_pids(m: StartMethod) -> Result<(), Failed> {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .start_method(m)
        .max_tasks_per_child(1)
        .build()?;
    let futures = (0..6)
        .map(|_| ex.submit(pid, ()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut pids = HashSet::new();
    for f in &futures {
        pids.insert(result(f)?);
    }
    check!(pids.len() == 6, "six calls, six processes: {pids:?}");
    let zero = ProcessPoolExecutor::builder()
        .max_tasks_per_child(0)
        .build();
    check!(
        matches!(zero, Err(PoolError::Args(_))),
        "max_tasks_per_child(0) is refused"
    );
    Ok(())
}

fn shutdown_wait_completes_pending_and_leaves_no_process(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 1)?;
    let pids = ex.pids();
    let futures = (0..5u32)
        .map(|i| ex.submit(nap_then_return, (i, 20)))
        .collect::<Result<Vec<_>, _>>()?;
    ex.shutdown(true, false);
    for (i, f) in futures.iter().enumerate() {
        check!(f.done(), "call {i} done at shutdown's return");
        check!(result(f)? == i as u32, "call {i}'s result");
    }
    check!(
        matches!(ex.submit(square, 1), Err(PoolError::Closed)),
        "submit after shutdown"
    );
    check!(ex.pids().is_empty(), "no worker left: {:?}", ex.pids());
    drop(ex);
    for p in pids {
        check!(!alive(p), "worker {p} still exists (or is a zombie)");
    }
    // Drop alone waits as well (Python's `with` block).
    let ex = executor(m, 2)?;
    let pids = ex.pids();
    let late = ex.submit(nap_then_return, (7, 50))?;
    drop(ex);
    check!(
        late.done() && result(&late)? == 7,
        "drop waited for the call"
    );
    for p in pids {
        check!(!alive(p), "worker {p} still exists after drop");
    }
    Ok(())
}

fn shutdown_cancel_futures_cancels_the_queued(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 1)?;
    let pids = ex.pids();
    let gate = Gate::new("shutdown-cancel", m);
    let running = ex.submit(block, gate.path())?;
    until("the blocker runs", || running.running())?;
    let queued = (0..3)
        .map(|i| ex.submit(square, i))
        .collect::<Result<Vec<_>, _>>()?;
    ex.shutdown(false, true);
    for q in &queued {
        check!(q.cancelled(), "a queued call was cancelled: {q:?}");
    }
    check!(!running.cancelled(), "the running call was not");
    check!(
        matches!(ex.submit(square, 1), Err(PoolError::Closed)),
        "submit after shutdown"
    );
    gate.open()?;
    check!(result(&running).is_ok(), "the running call finishes");
    drop(ex);
    for p in pids {
        check!(!alive(p), "worker {p} still exists after drop");
    }
    Ok(())
}

fn exception_holds_the_panic_message(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 1)?;
    let f = ex.submit(boom, 7)?;
    match f.exception() {
        Some(PoolError::Panicked(p)) => check!(p.message() == "boom 7", "message {p:?}"),
        other => return Err(format!("expected a panic, got {other:?}").into()),
    }
    check!(
        matches!(f.exception_timeout(LONG), Ok(Some(PoolError::Panicked(_)))),
        "asked again"
    );
    check!(
        matches!(f.result(), Err(PoolError::Panicked(p)) if p.message() == "boom 7"),
        "result is the error"
    );
    check!(ex.submit(square, 2)?.result()? == 4, "the worker goes on");
    Ok(())
}

fn done_callbacks_run_exactly_once(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 1)?;
    let gate = Gate::new("callback", m);
    let f = ex.submit(block, gate.path())?;
    let (tx, rx) = std::sync::mpsc::channel();
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, t) = (Arc::clone(&calls), tx.clone());
    f.add_done_callback(move |r| {
        c.fetch_add(1, SeqCst);
        let _ = t.send(r.copied().map_err(|e| e.to_string()));
    });
    let c = Arc::clone(&calls);
    f.add_done_callback(move |_| {
        c.fetch_add(1, SeqCst);
        panic!("a callback that panics harms nothing");
    });
    check!(calls.load(SeqCst) == 0, "no callback before the end");
    gate.open()?;
    let got = rx.recv_timeout(LONG)?;
    check!(got.is_ok(), "the callback saw the result: {got:?}");
    until("both callbacks ran", || calls.load(SeqCst) == 2)?;
    // Already done: runs at once, on this thread.
    let here = std::thread::current().id();
    let c = Arc::clone(&calls);
    f.add_done_callback(move |r| {
        assert!(r.is_ok());
        assert_eq!(std::thread::current().id(), here);
        c.fetch_add(1, SeqCst);
    });
    check!(calls.load(SeqCst) == 3, "the late callback ran at once");
    check!(result(&f).is_ok(), "the result is still there");
    // The result thread survived the panicking callback.
    let g = ex.submit(boom, 3)?;
    let t = tx.clone();
    g.add_done_callback(move |r| {
        let _ = t.send(r.copied().map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(LONG)?;
    check!(
        matches!(&got, Err(e) if e.contains("boom 3")),
        "an error callback: {got:?}"
    );
    check!(calls.load(SeqCst) == 3, "no callback ran twice");
    Ok(())
}

fn map_returns_results_in_order(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 2)?;
    for chunksize in [1, 7, 100] {
        let got: Vec<u64> = ex
            .map(square, 0..50u64, chunksize)?
            .timeout(LONG)
            .collect::<Result<_, _>>()?;
        check!(
            got == (0..50u64).map(|n| n * n).collect::<Vec<_>>(),
            "chunksize {chunksize}: {got:?}"
        );
    }
    let mixed: Vec<Result<u32, PoolError>> = ex
        .map(|n: u32| if n == 3 { panic!("three") } else { n }, 0..6, 2)?
        .collect();
    check!(mixed.len() == 6, "six results");
    for (i, r) in mixed.iter().enumerate() {
        match (i, r) {
            (3, Err(PoolError::Panicked(p))) => check!(p.message() == "three", "{p:?}"),
            (i, Ok(n)) => check!(*n as usize == i, "item {i} is {n}"),
            (i, other) => return Err(format!("item {i}: {other:?}").into()),
        }
    }
    check!(
        matches!(ex.map(square, [1u64], 0), Err(PoolError::Args(_))),
        "chunksize 0"
    );
    check!(
        ex.map(square, Vec::new(), 1)?.next().is_none(),
        "empty input"
    );
    Ok(())
}

fn handles_with_fds_are_refused(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 1)?;
    let event = multiproc_sync::Event::new()?;
    match ex.submit(takes_event, event) {
        Err(PoolError::Args(_)) => {}
        other => return Err(format!("expected Args, got {other:?}").into()),
    }
    check!(
        ex.submit(square, 5)?.result()? == 25,
        "the executor goes on"
    );
    Ok(())
}

fn map_timeout_ends_and_cancels_the_rest(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 1)?;
    let gate = Gate::new("map-timeout", m);
    let mut results = ex
        .map(block, vec![gate.path(); 3], 1)?
        .timeout(Duration::from_millis(200));
    check!(
        matches!(results.next(), Some(Err(PoolError::WaitTimeout))),
        "the first call is blocked"
    );
    check!(results.next().is_none(), "the map ends after its deadline");
    drop(results);
    gate.open()?;
    check!(
        ex.submit(square, 9)?.result()? == 81,
        "the executor goes on"
    );
    let pids = ex.pids();
    drop(ex);
    for p in pids {
        check!(!alive(p), "worker {p} still exists after drop");
    }
    Ok(())
}

fn initializer_runs_in_each_worker(m: StartMethod) -> Result<(), Failed> {
    let ex = ProcessPoolExecutor::builder()
        .max_workers(2)
        .start_method(m)
        .initializer(setup, "hello".to_string())
        .build()?;
    let futures = (0..4)
        .map(|_| ex.submit(greeting, ()))
        .collect::<Result<Vec<_>, _>>()?;
    for f in &futures {
        check!(result(f)? == "hello", "the worker was initialised");
    }
    Ok(())
}

fn kill_workers_fails_pending_futures(m: StartMethod) -> Result<(), Failed> {
    let ex = executor(m, 1)?;
    let pids = ex.pids();
    let gate = Gate::new("kill-workers", m);
    let running = ex.submit(block, gate.path())?;
    until("the blocker runs", || running.running())?;
    let queued = ex.submit(square, 2)?;
    ex.kill_workers();
    for f in [&running as &dyn AnyFuture, &queued] {
        check!(
            wait([f], WaitMode::AllCompleted, Some(LONG))
                .not_done
                .is_empty(),
            "a pending future completes"
        );
    }
    check!(
        matches!(result(&running), Err(PoolError::Terminated)),
        "the running call"
    );
    check!(
        matches!(result(&queued), Err(PoolError::Terminated)),
        "the queued call"
    );
    check!(
        matches!(ex.submit(square, 1), Err(PoolError::Closed)),
        "submit after kill_workers"
    );
    for p in pids {
        check!(!alive(p), "worker {p} still exists");
    }
    Ok(())
}
