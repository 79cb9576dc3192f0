//! Pools under every start method: results and their order, laziness, callbacks, worker
//! recycling and initializers, workers killed in the middle of their tasks, time limits,
//! panics, and shutdown that leaves no process behind.
//!
//! `harness = false`: one test thread, trials on the main thread, so fork is allowed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use multiproc_core::StartMethod;
use multiproc_pool::{MapOptions, Pool, PoolError};
use multiproc_testkit::{End, Failed, LONG, TestFn, check};

fn main() {
    let tests: &[(&str, TestFn)] = &[
        ("map_order_and_values", map_order_and_values),
        ("map_async_and_starmap", map_async_and_starmap),
        (
            "imap_over_an_endless_iterator",
            imap_over_an_endless_iterator,
        ),
        (
            "imap_unordered_yields_each_once",
            imap_unordered_yields_each_once,
        ),
        (
            "callbacks_run_once_in_the_parent",
            callbacks_run_once_in_the_parent,
        ),
        (
            "maxtasksperchild_1_gives_fresh_pids",
            maxtasksperchild_1_gives_fresh_pids,
        ),
        (
            "initializer_runs_once_per_worker",
            initializer_runs_once_per_worker,
        ),
        ("panics_and_typed_errors", panics_and_typed_errors),
        (
            "killed_worker_fails_only_its_task_50_times",
            killed_worker_fails_only_its_task_50_times,
        ),
        (
            "random_kills_lose_and_duplicate_nothing",
            random_kills_lose_and_duplicate_nothing,
        ),
        (
            "task_over_its_time_limit_fails",
            task_over_its_time_limit_fails,
        ),
        ("close_join_and_terminate", close_join_and_terminate),
        ("drop_leaves_no_child", drop_leaves_no_child),
        (
            "workers_die_with_their_parent",
            workers_die_with_their_parent,
        ),
        (
            "large_arguments_and_results_pass_the_rings",
            large_arguments_and_results_pass_the_rings,
        ),
        (
            "a_panicking_callback_spares_the_pool",
            a_panicking_callback_spares_the_pool,
        ),
        ("workers_ignore_sigint", workers_ignore_sigint),
        ("pools_back_to_back", pools_back_to_back),
        (
            "terminate_frees_a_map_blocked_on_a_full_ring",
            terminate_frees_a_map_blocked_on_a_full_ring,
        ),
        (
            "handles_with_fds_are_refused_as_arguments",
            sync_handles_as_task_arguments,
        ),
    ];
    multiproc_testkit::run(multiproc_testkit::trials(tests));
}

fn pool(m: StartMethod, n: usize) -> Result<Pool, Failed> {
    Pool::builder()
        .processes(n)
        .start_method(m)
        .build()
        .map_err(|e| format!("cannot start a pool: {e}").into())
}

fn fail(e: PoolError) -> Failed {
    format!("pool error: {e}").into()
}

fn square(x: u64) -> u64 {
    x * x
}

fn pid_of(_: u32) -> u32 {
    std::process::id()
}

fn map_order_and_values(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    let want: Vec<u64> = (0..1000u64).map(|x| x * x).collect();
    check!(
        p.map(square, 0..1000).map_err(fail)? == want,
        "default chunksize"
    );
    for cs in [1, 7, 999, 5000] {
        let got = p
            .map_with(square, 0..1000, MapOptions::new().chunksize(cs))
            .map_err(fail)?;
        check!(got == want, "chunksize {cs}");
    }
    check!(
        p.map(square, Vec::<u64>::new()).map_err(fail)?.is_empty(),
        "empty input"
    );
    check!(p.map(square, [3]).map_err(fail)? == [9], "one item");
    Ok(())
}

fn add((a, b): (u64, u64)) -> u64 {
    a + b
}

fn map_async_and_starmap(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    let r = p.map_async(square, 1..=5, None).map_err(fail)?;
    let pairs: Vec<(u64, u64)> = (0..50).map(|i| (i, 2 * i)).collect();
    check!(
        p.starmap(add, pairs).map_err(fail)? == (0..50).map(|i| 3 * i).collect::<Vec<u64>>(),
        "starmap"
    );
    check!(r.wait_timeout(LONG), "map_async never finished");
    check!(r.successful() == Some(true), "map_async not successful");
    check!(
        r.get_timeout(LONG).map_err(fail)? == [1, 4, 9, 16, 25],
        "map_async values"
    );
    let empty = p.map_async(square, Vec::new(), Some(3)).map_err(fail)?;
    check!(
        empty.get_timeout(LONG).map_err(fail)?.is_empty(),
        "empty map_async"
    );
    Ok(())
}

fn imap_over_an_endless_iterator(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    let first: Vec<u64> = p
        .imap(square, 0u64..)
        .take(100)
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    check!(
        first == (0..100u64).map(|x| x * x).collect::<Vec<_>>(),
        "first 100 squares in order"
    );
    let chunked: Vec<u64> = p
        .imap_with(square, (0u64..).step_by(3), MapOptions::new().chunksize(7))
        .take(50)
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    check!(
        chunked == (0..50u64).map(|i| (3 * i) * (3 * i)).collect::<Vec<_>>(),
        "chunked endless imap"
    );
    // The pool is still usable after the endless iterators were dropped.
    check!(
        p.apply(square, 12).map_err(fail)? == 144,
        "apply after imap"
    );
    Ok(())
}

fn imap_unordered_yields_each_once(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 3)?;
    for cs in [1, 10] {
        let mut seen: Vec<u64> = p
            .imap_unordered_with(square, 0..500u64, MapOptions::new().chunksize(cs))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        seen.sort_unstable();
        check!(
            seen == (0..500u64).map(|x| x * x).collect::<Vec<_>>(),
            "chunksize {cs}: every result exactly once"
        );
    }
    let progress = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&progress);
    let done: Vec<u64> = p
        .imap_with(
            square,
            0..40u64,
            MapOptions::new().on_progress(move |pr| {
                seen.store(pr.done as u32, SeqCst);
            }),
        )
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    check!(done.len() == 40, "imap length");
    check!(
        progress.load(SeqCst) == 40,
        "progress reached {}",
        progress.load(SeqCst)
    );
    Ok(())
}

fn boom(x: u32) -> u32 {
    if x == 0 {
        panic!("boom at {x}");
    }
    x
}

fn callbacks_run_once_in_the_parent(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    let me = std::process::id();
    let calls: Arc<parking_lot::Mutex<Vec<(String, u32)>>> = Arc::default();
    let mut results = Vec::new();
    for x in [0, 5] {
        let (c1, c2) = (Arc::clone(&calls), Arc::clone(&calls));
        results.push(
            p.apply_async_with(
                boom,
                x,
                move |v| c1.lock().push((format!("ok {v}"), std::process::id())),
                move |e| c2.lock().push((format!("err {e}"), std::process::id())),
            )
            .map_err(fail)?,
        );
    }
    let mut outcomes = Vec::new();
    for r in results {
        outcomes.push(r.get_timeout(LONG));
    }
    let calls = calls.lock().clone();
    check!(calls.len() == 2, "two callbacks in all: {calls:?}");
    check!(
        calls.iter().all(|(_, pid)| *pid == me),
        "callbacks ran in the parent"
    );
    check!(
        calls.iter().any(|(s, _)| s == "ok 5"),
        "success callback once: {calls:?}"
    );
    check!(
        calls
            .iter()
            .any(|(s, _)| s.starts_with("err ") && s.contains("boom at 0")),
        "error callback once: {calls:?}"
    );
    check!(
        matches!(&outcomes[0], Err(PoolError::Panicked(p)) if p.message() == "boom at 0"),
        "{:?}",
        outcomes[0]
    );
    check!(outcomes[1] == Ok(5), "{:?}", outcomes[1]);
    Ok(())
}

fn maxtasksperchild_1_gives_fresh_pids(m: StartMethod) -> Result<(), Failed> {
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .maxtasksperchild(1)
        .build()
        .map_err(fail)?;
    let mut pids = HashSet::new();
    for i in 0..8 {
        pids.insert(p.apply(pid_of, i).map_err(fail)?);
    }
    check!(pids.len() == 8, "8 tasks ran in {} processes", pids.len());
    // map chunks count as tasks, as in Python.
    let pids: Vec<u32> = p
        .map_with(pid_of, 0..6, MapOptions::new().chunksize(1))
        .map_err(fail)?;
    check!(
        pids.iter().collect::<HashSet<_>>().len() == 6,
        "6 chunks in fresh processes: {pids:?}"
    );
    Ok(())
}

static INITIALISED: AtomicU32 = AtomicU32::new(0);

fn init(tag: String) {
    assert_eq!(tag, "setup");
    INITIALISED.fetch_add(1, SeqCst);
}

fn init_count(_: u32) -> (u32, u32) {
    (std::process::id(), INITIALISED.load(SeqCst))
}

fn bad_init(_: ()) {
    panic!("cannot set up");
}

fn initializer_runs_once_per_worker(m: StartMethod) -> Result<(), Failed> {
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .initializer(init, "setup".to_string())
        .build()
        .map_err(fail)?;
    let seen = p
        .map_with(init_count, 0..200, MapOptions::new().chunksize(1))
        .map_err(fail)?;
    let per_pid: HashMap<u32, u32> = seen.into_iter().collect();
    check!(
        !per_pid.is_empty() && per_pid.len() <= 2,
        "workers: {per_pid:?}"
    );
    check!(
        per_pid.values().all(|&n| n == 1),
        "initializer counts: {per_pid:?}"
    );
    drop(p);
    let broken = Pool::builder()
        .processes(1)
        .start_method(m)
        .initializer(bad_init, ())
        .build()
        .map_err(fail)?;
    let r = broken.apply(square, 3);
    check!(
        matches!(&r, Err(PoolError::Initializer(why)) if why.contains("cannot set up")),
        "{r:?}"
    );
    Ok(())
}

fn checked(x: u32) -> Result<u32, String> {
    if x % 2 == 0 {
        Ok(x / 2)
    } else {
        Err(format!("{x} is odd"))
    }
}

fn exits(code: i32) -> u32 {
    std::process::exit(code)
}

fn panics_and_typed_errors(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    check!(p.apply(checked, 8).map_err(fail)? == Ok(4), "typed Ok");
    check!(
        p.apply(checked, 3).map_err(fail)? == Err("3 is odd".to_string()),
        "typed Err"
    );
    match p.apply(boom, 0) {
        Err(PoolError::Panicked(pn)) => {
            check!(pn.message() == "boom at 0", "message {:?}", pn.message());
            check!(
                pn.location().is_some_and(|l| l.contains("pools.rs")),
                "location {:?}",
                pn.location()
            );
        }
        other => return Err(format!("expected a panic, got {other:?}").into()),
    }
    // A panic fails its task only: the rest of its chunk runs.
    let all: Vec<Result<u32, PoolError>> = p
        .imap_with(boom, 0..10, MapOptions::new().chunksize(10))
        .collect();
    check!(all[0].is_err(), "task 0 panicked");
    check!(
        all[1..]
            .iter()
            .enumerate()
            .all(|(i, r)| *r == Ok(i as u32 + 1)),
        "{all:?}"
    );
    match p.apply(exits, 3) {
        Err(PoolError::WorkerLost { exitcode: 3, .. }) => {}
        other => return Err(format!("expected WorkerLost with code 3, got {other:?}").into()),
    }
    check!(
        p.apply(square, 4).map_err(fail)? == 16,
        "usable after exit()"
    );
    Ok(())
}

fn die_at(x: u32) -> u32 {
    if x == 17 {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
    x
}

fn killed_worker_fails_only_its_task_50_times(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    for round in 0..50 {
        let all: Vec<Result<u32, PoolError>> = p
            .imap_with(die_at, 0..40, MapOptions::new().chunksize(1))
            .collect();
        for (i, r) in all.iter().enumerate() {
            if i == 17 {
                check!(
                    matches!(r, Err(PoolError::WorkerLost { exitcode: -9, .. })),
                    "round {round}: task 17 gave {r:?}"
                );
            } else {
                check!(*r == Ok(i as u32), "round {round}: task {i} gave {r:?}");
            }
        }
        check!(
            p.map(square, 0..20).map_err(fail)? == (0..20u64).map(|x| x * x).collect::<Vec<_>>(),
            "round {round}: the next map"
        );
    }
    Ok(())
}

fn spin_ms(ms: u64) -> u64 {
    let until = Instant::now() + Duration::from_millis(ms);
    let mut n = 0u64;
    while Instant::now() < until {
        n = n.wrapping_add(1);
    }
    ms
}

fn random_kills_lose_and_duplicate_nothing(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    let (mut kills, mut lost, mut done) = (0u32, 0u32, 0u32);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let rounds = if m == StartMethod::Fork { 30 } else { 10 };
    for round in 0..rounds {
        // 40 one-task chunks of 1 ms each, then two kills of a random worker while they run.
        let tasks: Vec<_> = (0..40u64)
            .map(|i| p.apply_async(spin_ms, 1 + i % 2))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        for _ in 0..2 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(seed % 15));
            let pids = p.pids();
            if let Some(&pid) = pids.get((seed % 2) as usize)
                && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
                && rustix::process::kill_process(pid, rustix::process::Signal::KILL).is_ok()
            {
                kills += 1;
            }
        }
        for (i, t) in tasks.into_iter().enumerate() {
            match t.get_timeout(LONG) {
                Ok(v) => {
                    check!(v == 1 + i as u64 % 2, "round {round}: task {i} gave {v}");
                    done += 1;
                }
                Err(PoolError::WorkerLost { exitcode: -9, .. }) => lost += 1,
                Err(e) => return Err(format!("round {round}: task {i}: {e}").into()),
            }
        }
    }
    // A kill fails the one task its worker held, or none (an idle worker, or a kill that
    // found a worker already dead and not yet reaped).
    check!(lost <= kills, "{lost} tasks lost for {kills} kills");
    check!(done + lost == rounds * 40, "{done} done + {lost} lost");
    check!(p.apply(square, 9).map_err(fail)? == 81, "the pool goes on");
    Ok(())
}

fn sleep_secs(s: u64) -> u64 {
    std::thread::sleep(Duration::from_secs(s));
    s
}

fn task_over_its_time_limit_fails(m: StartMethod) -> Result<(), Failed> {
    let limit = Duration::from_millis(300);
    let p = Pool::builder()
        .processes(2)
        .start_method(m)
        .task_timeout(limit)
        .build()
        .map_err(fail)?;
    let slow = p.apply_async(sleep_secs, 120).map_err(fail)?;
    check!(
        p.apply(square, 5).map_err(fail)? == 25,
        "a quick task alongside"
    );
    match slow.get_timeout(LONG) {
        Err(PoolError::TaskTimeout { limit: l }) => check!(l == limit, "limit {l:?}"),
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    check!(
        p.map(square, 0..10).map_err(fail)? == (0..10u64).map(|x| x * x).collect::<Vec<_>>(),
        "the pool carries on"
    );
    Ok(())
}

fn close_join_and_terminate(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    check!(p.join() == Err(PoolError::NotClosed), "join before close");
    let pending: Vec<_> = (0..10)
        .map(|i| p.apply_async(spin_ms, i))
        .collect::<Result<_, _>>()
        .map_err(fail)?;
    p.close();
    check!(
        p.apply(square, 1) == Err(PoolError::Closed),
        "apply after close"
    );
    p.join().map_err(fail)?;
    for (i, r) in pending.into_iter().enumerate() {
        check!(r.get_timeout(LONG) == Ok(i as u64), "task {i} after join");
    }
    check!(
        p.pids().is_empty(),
        "workers left after join: {:?}",
        p.pids()
    );

    let p = pool(m, 2)?;
    let slow = p.apply_async(sleep_secs, 120).map_err(fail)?;
    p.terminate();
    check!(
        slow.get_timeout(LONG) == Err(PoolError::Terminated),
        "pending after terminate"
    );
    p.join().map_err(fail)?;
    Ok(())
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn drop_leaves_no_child(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 3)?;
    let _busy = p.apply_async(sleep_secs, 120).map_err(fail)?;
    check!(p.apply(square, 2).map_err(fail)? == 4, "a task");
    let pids = p.pids();
    check!(pids.len() == 3, "pids {pids:?}");
    drop(p);
    let left: Vec<u32> = pids.into_iter().filter(|&pid| alive(pid)).collect();
    check!(left.is_empty(), "processes (or zombies) left: {left:?}");
    let children: Vec<u32> = multiproc_core::active_children()
        .iter()
        .map(|c| c.pid())
        .collect();
    check!(children.is_empty(), "active children left: {children:?}");
    Ok(())
}

/// Starts a pool, reports its worker pids, then waits to be killed.
fn pool_owner((m, out): (StartMethod, End)) {
    let p = pool(m, 2).expect("a pool");
    assert_eq!(p.apply(square, 3).expect("a task"), 9);
    let pids: Vec<String> = p.pids().iter().map(u32::to_string).collect();
    out.send(&pids.join(","));
    std::thread::sleep(Duration::from_secs(600));
}

fn workers_die_with_their_parent(m: StartMethod) -> Result<(), Failed> {
    let (mine, theirs) = End::pair();
    let owner = multiproc_testkit::start(m, pool_owner, (m, theirs))?;
    let line = mine.line()?;
    let pids: Vec<u32> = line.split(',').filter_map(|s| s.parse().ok()).collect();
    check!(pids.len() == 2, "worker pids {line:?}");
    owner.kill().map_err(|e| format!("kill: {e}"))?;
    multiproc_testkit::join(&owner)?;
    let until = Instant::now() + LONG;
    while pids.iter().any(|&pid| alive(pid)) {
        check!(
            Instant::now() < until,
            "workers outlived their parent: {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn grow(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn checksum(v: Vec<u8>) -> (usize, u64) {
    (v.len(), v.iter().map(|&b| u64::from(b)).sum())
}

fn large_arguments_and_results_pass_the_rings(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    // Results and arguments of 3 MiB, larger than the 1 MiB rings.
    let sizes = [3 << 20, 10, 3 << 20, 500_000];
    let big = p
        .map_with(grow, sizes, MapOptions::new().chunksize(1))
        .map_err(fail)?;
    for (v, n) in big.iter().zip(sizes) {
        check!(*v == grow(n), "a result of {n} bytes came back changed");
    }
    let sums = p
        .map_with(checksum, big.clone(), MapOptions::new().chunksize(1))
        .map_err(fail)?;
    for ((len, sum), v) in sums.into_iter().zip(&big) {
        check!(
            len == v.len() && sum == v.iter().map(|&b| u64::from(b)).sum::<u64>(),
            "an argument of {} bytes arrived changed",
            v.len()
        );
    }
    Ok(())
}

fn a_panicking_callback_spares_the_pool(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    let r = p
        .apply_async_with(square, 3, |_| panic!("a callback that panics"), |_| {})
        .map_err(fail)?;
    check!(
        r.get_timeout(LONG) == Ok(9),
        "the result is still delivered"
    );
    check!(p.apply(square, 4).map_err(fail)? == 16, "the pool goes on");
    Ok(())
}

fn set_event(e: multiproc_sync::Event) -> bool {
    e.set();
    true
}

fn sync_handles_as_task_arguments(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    let e = multiproc_sync::Event::new().map_err(|e| format!("{e}"))?;
    // An `Event` owns a file descriptor (its heap segment): it cannot pass through the rings,
    // and says so, as Python refuses a `multiprocessing.Event` in a pool task.
    let r = p.apply(set_event, e.clone());
    check!(
        matches!(&r, Err(PoolError::Args(why)) if why.contains("file descriptor")),
        "{r:?}"
    );
    check!(!e.is_set(), "no worker ran the task");
    // Through `imap`: the error once, then the end (no wait for chunks never sent).
    let mut it = p.imap(set_event, vec![e.clone(); 3]);
    check!(
        matches!(it.next(), Some(Err(PoolError::Args(_)))),
        "imap's first item"
    );
    check!(it.next().is_none(), "imap ends after the error");
    drop(it);
    check!(p.apply(square, 5).map_err(fail)? == 25, "the pool goes on");
    Ok(())
}

fn workers_ignore_sigint(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 2)?;
    // Both workers have run a task, so both are past their start (a worker still starting
    // has not set SIGINT aside yet: Ctrl-C then kills it, and it is replaced).
    let before = p.pids();
    let until = Instant::now() + LONG;
    let mut seen = HashSet::new();
    while seen.len() < before.len() {
        check!(
            Instant::now() < until,
            "only {seen:?} of {before:?} ran a task"
        );
        seen.extend(
            p.map_with(pid_of, 0..64, MapOptions::new().chunksize(1))
                .map_err(fail)?,
        );
    }
    let busy = p.apply_async(spin_ms, 300).map_err(fail)?;
    for &pid in &before {
        let pid = rustix::process::Pid::from_raw(pid as i32).ok_or("a pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::INT)
            .map_err(|e| format!("SIGINT: {e}"))?;
    }
    // Ctrl-C reaches the whole process group; the workers go on (the parent decides).
    check!(
        busy.get_timeout(LONG) == Ok(300),
        "the task a worker was running"
    );
    check!(
        p.map(square, 0..10).map_err(fail)?.len() == 10,
        "the next map"
    );
    check!(
        p.pids() == before,
        "workers replaced after SIGINT: {before:?} -> {:?}",
        p.pids()
    );
    Ok(())
}

fn len_of(v: Vec<u8>) -> usize {
    v.len()
}

fn terminate_frees_a_map_blocked_on_a_full_ring(m: StartMethod) -> Result<(), Failed> {
    let p = pool(m, 1)?;
    // The only worker sleeps, so the map's 8 MiB of arguments cannot all fit the 1 MiB task
    // ring: its submission waits for room that never comes, until the pool is terminated.
    let sleeper = p.apply_async(sleep_secs, 120).map_err(fail)?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<usize, PoolError>>();
    std::thread::scope(|s| -> Result<(), Failed> {
        s.spawn(|| {
            let r = p.map_with(
                len_of,
                vec![vec![0u8; 64 << 10]; 128],
                MapOptions::new().chunksize(1),
            );
            let _ = tx.send(r.map(|v| v.len()));
        });
        p.terminate();
        match rx.recv_timeout(LONG) {
            Ok(Err(PoolError::Terminated)) | Ok(Err(PoolError::Closed)) => Ok(()),
            Ok(other) => Err(Failed::from(format!(
                "the blocked map ended with {other:?}"
            ))),
            Err(_) => Err(Failed::from("the map stayed blocked after terminate")),
        }
    })?;
    check!(
        sleeper.get_timeout(LONG) == Err(PoolError::Terminated),
        "the sleeping task"
    );
    Ok(())
}

/// A pool dropped and the next created at once, many times: no refusal (the dropped pool's
/// threads may still be counted for a moment), no process left.
fn pools_back_to_back(m: StartMethod) -> Result<(), Failed> {
    let rounds = if m == StartMethod::Fork { 100 } else { 20 };
    for round in 0..rounds {
        let p = pool(m, 2).map_err(|e| format!("round {round}: {e:?}"))?;
        check!(p.apply(square, 3).map_err(fail)? == 9, "round {round}");
    }
    let children = multiproc_core::active_children();
    check!(children.is_empty(), "children left: {children:?}");
    Ok(())
}
