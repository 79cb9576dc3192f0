//! The primitives across real processes, every test under fork, spawn and forkserver.
//!
//! `harness = false`: one test thread, trials on the main thread (fork is allowed).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::time::{Duration, Instant};

use multiproc_core::heap::Shared;
use multiproc_core::{Process, StartMethod};
use multiproc_sync::{
    Acquired, Barrier, BoundedSemaphore, BrokenBarrier, Condition, Error, Event, Lock, MAX_WAITERS,
    RLock, Semaphore, TryAcquireError,
};
use multiproc_testkit::{Failed, LONG, TestFn, Trial, check, join, start, start_daemon};

/// Counters shared with children: `[value, holders now, most holders seen, done flags]`.
type Cells = Shared<[AtomicU64; 4]>;

fn main() {
    let tests: &[(&str, TestFn)] = &[
        (
            "lock_counter_reaches_n_times_m",
            lock_counter_reaches_n_times_m,
        ),
        (
            "rlock_counter_and_reentry_in_children",
            rlock_counter_and_reentry_in_children,
        ),
        (
            "semaphore_2_never_lets_a_third_in",
            semaphore_2_never_lets_a_third_in,
        ),
        (
            "semaphore_2_holds_two_at_once",
            semaphore_2_holds_two_at_once,
        ),
        (
            "lock_owner_death_is_recovered",
            lock_owner_death_is_recovered,
        ),
        (
            "rlock_owner_death_is_recovered",
            rlock_owner_death_is_recovered,
        ),
        (
            "lock_owner_death_wakes_a_blocked_acquire",
            lock_owner_death_wakes_a_blocked_acquire,
        ),
        (
            "two_waiters_take_a_dead_owners_lock_once",
            two_waiters_take_a_dead_owners_lock_once,
        ),
        (
            "lock_takeover_when_owner_pid_reused",
            lock_takeover_when_owner_pid_reused,
        ),
        (
            "lock_takeover_when_owner_pid_reused_start_time_tokens",
            lock_takeover_when_owner_pid_reused_start_time_tokens,
        ),
        (
            "lock_released_by_another_process",
            lock_released_by_another_process,
        ),
        (
            "rlock_release_by_non_owner_is_an_error",
            rlock_release_by_non_owner_is_an_error,
        ),
        ("event_wait_false_then_true", event_wait_false_then_true),
        (
            "event_set_wakes_3_blocked_waiters",
            event_set_wakes_3_blocked_waiters,
        ),
        (
            "event_set_then_clear_releases_blocked_waiters",
            event_set_then_clear_releases_blocked_waiters,
        ),
        (
            "timeouts_return_within_bounds",
            timeouts_return_within_bounds,
        ),
        (
            "condition_notify_wakes_exactly_n",
            condition_notify_wakes_exactly_n,
        ),
        (
            "condition_wait_for_and_timeout",
            condition_wait_for_and_timeout,
        ),
        (
            "barrier_of_3_distinct_indices",
            barrier_of_3_distinct_indices,
        ),
        (
            "barrier_timeout_breaks_it_for_all",
            barrier_timeout_breaks_it_for_all,
        ),
        ("barrier_abort_and_reset", barrier_abort_and_reset),
        ("condition_ping_pong", condition_ping_pong),
        ("condition_no_leftover_grants", condition_no_leftover_grants),
        (
            "condition_dead_waiter_is_not_counted",
            condition_dead_waiter_is_not_counted,
        ),
        ("barrier_default_timeout", barrier_default_timeout),
        ("barrier_panicking_action", barrier_panicking_action),
        ("barrier_dead_party", barrier_dead_party),
        (
            "barrier_stored_action_runs_in_the_last_party",
            barrier_stored_action_runs_in_the_last_party,
        ),
        (
            "barrier_stored_action_panic_breaks_it",
            barrier_stored_action_panic_breaks_it,
        ),
        (
            "bounded_semaphore_bound_holds_in_a_child",
            bounded_semaphore_bound_holds_in_a_child,
        ),
    ];
    let mut trials = multiproc_testkit::trials(tests);
    trials.push(Trial::test("misuse_errors", misuse_errors));
    trials.push(Trial::test(
        "condition_full_table_is_a_typed_error",
        condition_full_table_is_a_typed_error,
    ));
    trials.push(Trial::test(
        "lock_of_a_dead_process_with_our_pid_is_taken_over",
        lock_of_a_dead_process_with_our_pid_is_taken_over,
    ));
    multiproc_testkit::run(trials);
}

fn cells() -> Result<Cells, Failed> {
    Ok(Shared::new()?)
}

/// Adds 1 to the value 1000 times with a non-atomic read-modify-write under the lock.
fn add_under_lock((lock, c): (Lock, Cells)) {
    for _ in 0..1000 {
        let _g = lock.acquire().unwrap();
        let v = c[0].load(Relaxed);
        std::hint::black_box(v);
        c[0].store(v + 1, Relaxed);
    }
}

fn lock_counter_reaches_n_times_m(m: StartMethod) -> Result<(), Failed> {
    let lock = Lock::new()?;
    let c = cells()?;
    let ps: Vec<Process> = (0..4)
        .map(|_| start(m, add_under_lock, (lock.clone(), c.clone())))
        .collect::<Result<_, _>>()?;
    for p in &ps {
        check!(join(p)? == 0, "child failed");
    }
    check!(c[0].load(SeqCst) == 4000, "counter {}", c[0].load(SeqCst));
    check!(!lock.is_locked(), "lock left held");
    Ok(())
}

/// Takes the RLock three levels deep for each increment.
fn add_under_rlock((lock, c): (RLock, Cells)) {
    for _ in 0..500 {
        let _a = lock.acquire().unwrap();
        let _b = lock.acquire().unwrap();
        let _c = lock.acquire().unwrap();
        assert_eq!(lock.depth(), 3);
        let v = c[0].load(Relaxed);
        c[0].store(v + 1, Relaxed);
    }
}

fn rlock_counter_and_reentry_in_children(m: StartMethod) -> Result<(), Failed> {
    let lock = RLock::new()?;
    let c = cells()?;
    let ps: Vec<Process> = (0..3)
        .map(|_| start(m, add_under_rlock, (lock.clone(), c.clone())))
        .collect::<Result<_, _>>()?;
    for p in &ps {
        check!(join(p)? == 0, "child failed");
    }
    check!(c[0].load(SeqCst) == 1500, "counter {}", c[0].load(SeqCst));
    check!(lock.depth() == 0, "depth {}", lock.depth());
    Ok(())
}

/// Enters the semaphore 200 times, recording how many holders there are at once.
fn hold_semaphore((sem, c): (Semaphore, Cells)) {
    for _ in 0..200 {
        let _g = sem.acquire();
        let now = c[1].fetch_add(1, SeqCst) + 1;
        c[2].fetch_max(now, SeqCst);
        std::thread::yield_now();
        c[1].fetch_sub(1, SeqCst);
    }
}

fn semaphore_2_never_lets_a_third_in(m: StartMethod) -> Result<(), Failed> {
    let sem = Semaphore::new(2)?;
    let c = cells()?;
    let ps: Vec<Process> = (0..4)
        .map(|_| start(m, hold_semaphore, (sem.clone(), c.clone())))
        .collect::<Result<_, _>>()?;
    for p in &ps {
        check!(join(p)? == 0, "child failed");
    }
    check!(
        c[2].load(SeqCst) <= 2,
        "{} holders at once",
        c[2].load(SeqCst)
    );
    check!(c[2].load(SeqCst) >= 1, "nobody held it");
    check!(sem.get_value() == 2, "value {}", sem.get_value());
    Ok(())
}

/// Takes a unit, then meets the other holder and the parent at the barrier (which opens only
/// if both children hold a unit at once), and again once the parent has checked that a third
/// is refused. Exits 0 if both meetings happened.
fn hold_while_the_other_holds((sem, b): (Semaphore, Barrier)) {
    let unit = sem.acquire();
    let both = b.wait_timeout(LONG).is_ok();
    let checked = b.wait_timeout(LONG).is_ok();
    drop(unit);
    std::process::exit(if both && checked { 0 } else { 1 });
}

fn semaphore_2_holds_two_at_once(m: StartMethod) -> Result<(), Failed> {
    // If only one unit could be held, the second child would block in `acquire` and the
    // barrier of three would never open.
    let sem = Semaphore::new(2)?;
    let b = Barrier::new(3, None)?;
    let ps: Vec<Process> = (0..2)
        .map(|_| start_daemon(m, hold_while_the_other_holds, (sem.clone(), b.clone())))
        .collect::<Result<_, _>>()?;
    check!(
        b.wait_timeout(LONG).is_ok(),
        "the two children never held a unit at once"
    );
    check!(
        sem.get_value() == 0 && sem.try_acquire().is_none(),
        "a third holder got in (value {})",
        sem.get_value()
    );
    check!(b.wait_timeout(LONG).is_ok(), "second meeting");
    for p in &ps {
        check!(join(p)? == 0, "a holder failed");
    }
    check!(sem.get_value() == 2, "value {}", sem.get_value());
    Ok(())
}

/// Takes the lock, says so through the event, and sleeps holding it.
fn hold_forever((lock, ready): (Lock, Event)) {
    lock.acquire().unwrap().leak();
    ready.set();
    std::thread::sleep(Duration::from_secs(3600));
}

fn lock_owner_death_is_recovered(m: StartMethod) -> Result<(), Failed> {
    let lock = Lock::new()?;
    let ready = Event::new()?;
    let p = start_daemon(m, hold_forever, (lock.clone(), ready.clone()))?;
    check!(ready.wait_timeout(LONG), "holder never took the lock");
    check!(
        matches!(lock.try_acquire(), Err(TryAcquireError::WouldBlock)),
        "lock not held by the child"
    );
    p.kill()?;
    check!(join(&p)? == -9, "exit code");
    let t = Instant::now();
    match lock.acquire_timeout(LONG) {
        Err(TryAcquireError::OwnerDied(e)) => {
            check!(
                Some(e.dead_owner()) == p.pid(),
                "dead owner {} vs {:?}",
                e.dead_owner(),
                p.pid()
            );
            drop(e.into_guard());
        }
        other => return Err(format!("expected OwnerDied, got {other:?}").into()),
    }
    check!(
        t.elapsed() < Duration::from_secs(10),
        "recovery took {:?}",
        t.elapsed()
    );
    // The lock works normally again.
    let g = lock.try_acquire().map_err(|e| format!("{e}"))?;
    drop(g);
    check!(!lock.is_locked(), "still held");
    Ok(())
}

fn hold_rlock_forever((lock, ready): (RLock, Event)) {
    for _ in 0..2 {
        std::mem::forget(lock.acquire().unwrap());
    }
    ready.set();
    std::thread::sleep(Duration::from_secs(3600));
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the machine.
fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Announces itself (`c[3]`), blocks on the RLock, then records when it returned (`c[1]`) and
/// the dead owner it was told about (`c[0]`); exits 0 only on `OwnerDied` with the lock free
/// again after the guard.
fn rlock_waiter((lock, c): (RLock, Cells)) {
    c[3].store(1, SeqCst);
    let r = lock.acquire_timeout(LONG);
    c[1].store(now_ns(), SeqCst);
    let ok = match r {
        Err(TryAcquireError::OwnerDied(e)) => {
            c[0].store(u64::from(e.dead_owner()), SeqCst);
            let depth = lock.depth();
            drop(e.into_guard());
            depth == 1 && lock.depth() == 0
        }
        _ => false,
    };
    std::process::exit(if ok { 0 } else { 1 });
}

/// As `rlock_waiter`, for a `Lock` and its blocking `acquire()` (no deadline: the test's
/// `join` is the deadline).
fn lock_waiter((lock, c): (Lock, Cells)) {
    c[3].store(1, SeqCst);
    let r = lock.acquire();
    c[1].store(now_ns(), SeqCst);
    let ok = match r {
        Err(e) => {
            c[0].store(u64::from(e.dead_owner()), SeqCst);
            drop(e.into_guard());
            !lock.is_locked()
        }
        Ok(_) => false,
    };
    std::process::exit(if ok { 0 } else { 1 });
}

/// A waiter already blocked when the owner dies: the waiter announces itself and the parent
/// sees the lock word's waiters bit (set only by a waiter that found the lock held; the
/// parent itself never contends) before it kills the owner. The waiter must get `OwnerDied`
/// naming the owner, after the kill, and within 20 s of it.
fn blocked_waiter_sees_owner_die(
    c: &Cells,
    owner: &Process,
    waiter: &Process,
    flagged: impl Fn() -> bool,
) -> Result<(), Failed> {
    check!(
        poll_until(|| c[3].load(SeqCst) == 1 && flagged()),
        "the waiter never blocked"
    );
    check!(
        waiter.is_alive() && c[1].load(SeqCst) == 0,
        "the waiter returned while the owner lived"
    );
    let killed = now_ns();
    owner.kill()?;
    check!(join(owner)? == -9, "owner exit code");
    check!(join(waiter)? == 0, "the waiter did not get OwnerDied");
    let returned = c[1].load(SeqCst);
    check!(returned > killed, "the waiter returned before the kill");
    check!(
        returned - killed < 20_000_000_000,
        "recovery took {} ms",
        (returned - killed) / 1_000_000
    );
    check!(
        Some(c[0].load(SeqCst) as u32) == owner.pid(),
        "dead owner {} vs {:?}",
        c[0].load(SeqCst),
        owner.pid()
    );
    Ok(())
}

fn rlock_owner_death_is_recovered(m: StartMethod) -> Result<(), Failed> {
    let lock = RLock::new()?;
    let ready = Event::new()?;
    let c = cells()?;
    let p = start_daemon(m, hold_rlock_forever, (lock.clone(), ready.clone()))?;
    check!(ready.wait_timeout(LONG), "holder never took the lock");
    let w = start_daemon(m, rlock_waiter, (lock.clone(), c.clone()))?;
    blocked_waiter_sees_owner_die(&c, &p, &w, || lock.waiters_flagged())?;
    check!(
        lock.depth() == 0,
        "depth after the waiter left: {}",
        lock.depth()
    );
    let _a = lock.acquire().map_err(|e| format!("{e}"))?;
    let _b = lock.acquire().map_err(|e| format!("{e}"))?;
    check!(lock.depth() == 2, "depth {}", lock.depth());
    Ok(())
}

fn lock_owner_death_wakes_a_blocked_acquire(m: StartMethod) -> Result<(), Failed> {
    let lock = Lock::new()?;
    let ready = Event::new()?;
    let c = cells()?;
    let p = start_daemon(m, hold_forever, (lock.clone(), ready.clone()))?;
    check!(ready.wait_timeout(LONG), "holder never took the lock");
    let w = start_daemon(m, lock_waiter, (lock.clone(), c.clone()))?;
    blocked_waiter_sees_owner_die(&c, &p, &w, || lock.waiters_flagged())?;
    check!(!lock.is_locked(), "still held");
    Ok(())
}

/// Arrives (`c[3]`), waits for the lock, holds it 50 ms counting holders (`c[1]` now, `c[2]`
/// the most seen) and counts `OwnerDied` results (`c[0]`).
fn contend_after_death((lock, c): (Lock, Cells)) {
    c[3].fetch_add(1, SeqCst);
    let (guard, died) = match lock.acquire() {
        Ok(g) => (g, false),
        Err(e) => (e.into_guard(), true),
    };
    let now = c[1].fetch_add(1, SeqCst) + 1;
    c[2].fetch_max(now, SeqCst);
    // Widens the window in which a second taker would overlap.
    std::thread::sleep(Duration::from_millis(50));
    c[1].fetch_sub(1, SeqCst);
    if died {
        c[0].fetch_add(1, SeqCst);
    }
    drop(guard);
}

fn two_waiters_take_a_dead_owners_lock_once(m: StartMethod) -> Result<(), Failed> {
    // Both may judge the owner dead; only one may take the lock over, the other waits for it.
    let lock = Lock::new()?;
    let ready = Event::new()?;
    let c = cells()?;
    let p = start_daemon(m, hold_forever, (lock.clone(), ready.clone()))?;
    check!(ready.wait_timeout(LONG), "holder never took the lock");
    let ws: Vec<Process> = (0..2)
        .map(|_| start_daemon(m, contend_after_death, (lock.clone(), c.clone())))
        .collect::<Result<_, _>>()?;
    check!(
        poll_until(|| c[3].load(SeqCst) == 2 && lock.waiters_flagged()),
        "the waiters never blocked"
    );
    p.kill()?;
    check!(join(&p)? == -9, "owner exit code");
    for w in &ws {
        check!(join(w)? == 0, "a waiter failed");
    }
    check!(c[0].load(SeqCst) == 1, "{} take-overs", c[0].load(SeqCst));
    check!(
        c[2].load(SeqCst) == 1,
        "{} holders at once",
        c[2].load(SeqCst)
    );
    check!(!lock.is_locked(), "still held");
    Ok(())
}

/// Takes the lock (recording start-time tokens if `fallback`), says so, holds it.
fn hold_with_tokens((lock, ready, fallback): (Lock, Event, bool)) {
    if fallback {
        multiproc_sync::testing::force_start_time_tokens(true);
    }
    hold_forever((lock, ready));
}

fn condition_full_table_is_a_typed_error() -> Result<(), Failed> {
    // MAX_WAITERS threads wait (threads, not processes: cheaper, and the table is the same);
    // one more gets `TooManyWaiters`, not a hang or a panic. The threads are joined before the
    // trial returns, so later fork trials see a single-threaded process again.
    let cond = Condition::new()?;
    let woken = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..MAX_WAITERS {
            s.spawn(|| {
                let _g = cond.lock().acquire().unwrap();
                if cond.wait_timeout(LONG).unwrap() {
                    woken.fetch_add(1, SeqCst);
                }
            });
        }
        let full = until(&cond, || cond.waiting() as usize == MAX_WAITERS);
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        let extra = cond.wait_timeout(Duration::ZERO);
        cond.notify_all()?;
        check!(full, "the threads never all waited: {}", cond.waiting());
        check!(
            matches!(extra, Err(Error::TooManyWaiters(n)) if n == MAX_WAITERS),
            "one waiter too many got {extra:?}"
        );
        Ok::<(), Failed>(())
    })?;
    check!(
        woken.load(SeqCst) == MAX_WAITERS as u64,
        "{} of {MAX_WAITERS} notified",
        woken.load(SeqCst)
    );
    check!(cond.waiting() == 0, "{} still counted", cond.waiting());
    Ok(())
}

fn lock_of_a_dead_process_with_our_pid_is_taken_over() -> Result<(), Failed> {
    // Simulated: we hold the lock, then its record names another process with our pid (one
    // that died holding it before we got its pid). A `Lock` held by ourselves blocks (as in
    // Python); one held by a dead process with our pid is taken over. Likewise an RLock's
    // re-entry is refused to a caller that is not the recorded process.
    let lock = Lock::new()?;
    lock.acquire().map_err(|e| format!("{e}"))?.leak();
    check!(
        matches!(
            lock.acquire_timeout(Duration::from_millis(100)),
            Err(TryAcquireError::WouldBlock)
        ),
        "a Lock we hold was taken again"
    );
    lock.overwrite_owner_token(lock.owner_token() ^ 1);
    match lock.acquire_timeout(LONG) {
        Err(TryAcquireError::OwnerDied(e)) => {
            check!(
                e.dead_owner() == std::process::id(),
                "dead owner {}",
                e.dead_owner()
            );
            drop(e.into_guard());
        }
        other => return Err(format!("expected OwnerDied, got {other:?}").into()),
    }
    check!(!lock.is_locked(), "still held");
    let rlock = RLock::new()?;
    std::mem::forget(rlock.acquire().map_err(|e| format!("{e}"))?);
    rlock.overwrite_owner_token(rlock.owner_token() ^ 1);
    match rlock.acquire_timeout(LONG) {
        Err(TryAcquireError::OwnerDied(e)) => {
            check!(
                rlock.depth() == 1,
                "depth {} after the take-over",
                rlock.depth()
            );
            drop(e.into_guard());
        }
        other => return Err(format!("expected OwnerDied, got {other:?}").into()),
    }
    check!(rlock.depth() == 0, "depth {}", rlock.depth());
    Ok(())
}

/// Lock take-over when the owner's pid was reused, simulated: the holder lives, but its
/// recorded token is overwritten with another process's, as if the recorder had died and the
/// live process had got its pid.
fn owner_pid_reused(m: StartMethod, fallback: bool) -> Result<(), Failed> {
    let lock = Lock::new()?;
    let ready = Event::new()?;
    let p = start_daemon(m, hold_with_tokens, (lock.clone(), ready.clone(), fallback))?;
    check!(ready.wait_timeout(LONG), "holder never took the lock");
    let token = lock.owner_token();
    check!(token != 0, "no token recorded");
    if fallback {
        check!(
            token & multiproc_sync::testing::START_TIME != 0,
            "not a start-time token: {token:#x}"
        );
    }
    // The live holder whose record matches is not taken over.
    check!(
        matches!(
            lock.acquire_timeout(Duration::from_millis(300)),
            Err(TryAcquireError::WouldBlock)
        ),
        "a live owner's lock was taken"
    );
    lock.overwrite_owner_token(token ^ 1);
    let t = Instant::now();
    match lock.acquire_timeout(LONG) {
        Err(TryAcquireError::OwnerDied(e)) => {
            check!(
                Some(e.dead_owner()) == p.pid(),
                "dead owner {} vs {:?}",
                e.dead_owner(),
                p.pid()
            );
            drop(e.into_guard());
        }
        other => return Err(format!("expected OwnerDied, got {other:?}").into()),
    }
    check!(
        t.elapsed() < Duration::from_secs(20),
        "take-over took {:?}",
        t.elapsed()
    );
    check!(p.is_alive(), "the holder died: nothing was simulated");
    p.kill()?;
    join(&p)?;
    Ok(())
}

fn lock_takeover_when_owner_pid_reused(m: StartMethod) -> Result<(), Failed> {
    owner_pid_reused(m, false)
}

fn lock_takeover_when_owner_pid_reused_start_time_tokens(m: StartMethod) -> Result<(), Failed> {
    owner_pid_reused(m, true)
}

fn release_it(lock: Lock) {
    lock.release().unwrap();
}

fn lock_released_by_another_process(m: StartMethod) -> Result<(), Failed> {
    // Python semantics: a Lock is not owned; another process may release it.
    let lock = Lock::new()?;
    check!(lock.acquire_raw(None) == Acquired::Yes, "acquire");
    let p = start(m, release_it, lock.clone())?;
    check!(join(&p)? == 0, "child failed to release");
    check!(!lock.is_locked(), "still held");
    check!(
        matches!(lock.release(), Err(Error::NotHeld)),
        "release of a free lock"
    );
    Ok(())
}

fn try_release_rlock(lock: RLock) {
    assert!(matches!(lock.release(), Err(Error::NotOwner)));
}

fn rlock_release_by_non_owner_is_an_error(m: StartMethod) -> Result<(), Failed> {
    let lock = RLock::new()?;
    let _g = lock.acquire().map_err(|e| format!("{e}"))?;
    let p = start(m, try_release_rlock, lock.clone())?;
    check!(
        join(&p)? == 0,
        "the child could release an RLock it does not own"
    );
    check!(lock.depth() == 1, "depth {}", lock.depth());
    Ok(())
}

fn set_after_go((go, ev): (Event, Event)) {
    assert!(go.wait_timeout(LONG));
    ev.set();
}

fn event_wait_false_then_true(m: StartMethod) -> Result<(), Failed> {
    let go = Event::new()?;
    let ev = Event::new()?;
    let p = start(m, set_after_go, (go.clone(), ev.clone()))?;
    check!(
        !ev.wait_timeout(Duration::from_millis(100)),
        "set too early"
    );
    go.set();
    check!(ev.wait_timeout(LONG), "never set by the child");
    check!(ev.is_set(), "is_set");
    ev.clear();
    check!(!ev.is_set(), "clear");
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

/// Waits for the event: exits 0 if `wait_timeout(LONG)` returned `true`, 1 otherwise.
fn wait_event(ev: Event) {
    std::process::exit(if ev.wait_timeout(LONG) { 0 } else { 1 });
}

/// Polls `f` with `yield_now` until it holds or `LONG` passes.
fn poll_until(f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + LONG;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

/// Starts three children blocked in `Event::wait` (proved by the event's sleeper count), runs
/// `act`, and requires every waiter to return `true` within 20 s.
fn three_blocked_waiters(m: StartMethod, act: fn(&Event)) -> Result<(), Failed> {
    let ev = Event::new()?;
    let ps: Vec<Process> = (0..3)
        .map(|_| start_daemon(m, wait_event, ev.clone()))
        .collect::<Result<_, _>>()?;
    check!(
        poll_until(|| ev.sleepers() == 3),
        "the waiters never all blocked: {} sleeping",
        ev.sleepers()
    );
    let t = Instant::now();
    act(&ev);
    for p in &ps {
        check!(
            join(p)? == 0,
            "a waiter blocked before the set did not return true"
        );
    }
    check!(
        t.elapsed() < Duration::from_secs(20),
        "waiters took {:?} to return",
        t.elapsed()
    );
    check!(ev.sleepers() == 0, "sleepers left: {}", ev.sleepers());
    Ok(())
}

fn event_set_wakes_3_blocked_waiters(m: StartMethod) -> Result<(), Failed> {
    three_blocked_waiters(m, |ev| ev.set())
}

fn event_set_then_clear_releases_blocked_waiters(m: StartMethod) -> Result<(), Failed> {
    // Issue 6 §1b.2: a clear right after the set used to leave the waiters asleep.
    three_blocked_waiters(m, |ev| {
        ev.set();
        ev.clear();
    })
}

fn within(t: Instant, d: Duration) -> bool {
    let e = t.elapsed();
    e >= d && e < d + Duration::from_secs(5)
}

fn timeouts_return_within_bounds(m: StartMethod) -> Result<(), Failed> {
    let lock = Lock::new()?;
    let rlock = RLock::new()?;
    let sem = BoundedSemaphore::new(1)?;
    let ready = Event::new()?;
    // A child holds the lock, the RLock and the semaphore's only unit.
    fn hold_all((lock, rlock, sem, ready): (Lock, RLock, BoundedSemaphore, Event)) {
        lock.acquire().unwrap().leak();
        std::mem::forget(rlock.acquire().unwrap());
        sem.acquire().leak();
        ready.set();
        std::thread::sleep(Duration::from_secs(3600));
    }
    let p = start_daemon(
        m,
        hold_all,
        (lock.clone(), rlock.clone(), sem.clone(), ready.clone()),
    )?;
    check!(ready.wait_timeout(LONG), "child never got ready");
    let d = Duration::from_millis(150);
    let t = Instant::now();
    check!(
        matches!(lock.acquire_timeout(d), Err(TryAcquireError::WouldBlock)),
        "lock"
    );
    check!(within(t, d), "lock timeout took {:?}", t.elapsed());
    let t = Instant::now();
    check!(
        matches!(rlock.acquire_timeout(d), Err(TryAcquireError::WouldBlock)),
        "rlock"
    );
    check!(within(t, d), "rlock timeout took {:?}", t.elapsed());
    let t = Instant::now();
    check!(sem.acquire_timeout(d).is_none(), "semaphore");
    check!(within(t, d), "semaphore timeout took {:?}", t.elapsed());
    let ev = Event::new()?;
    let t = Instant::now();
    check!(!ev.wait_timeout(d), "event");
    check!(within(t, d), "event timeout took {:?}", t.elapsed());
    p.kill()?;
    join(&p)?;
    Ok(())
}

fn misuse_errors() -> Result<(), Failed> {
    let lock = Lock::new()?;
    check!(
        matches!(lock.release(), Err(Error::NotHeld)),
        "Lock release unheld"
    );
    let rlock = RLock::new()?;
    check!(
        matches!(rlock.release(), Err(Error::NotOwner)),
        "RLock release unheld"
    );
    let sem = BoundedSemaphore::new(2)?;
    check!(
        matches!(sem.release(), Err(Error::TooManyReleases)),
        "bounded over-release"
    );
    let g = sem.acquire();
    check!(sem.get_value() == 1, "value");
    drop(g);
    check!(sem.get_value() == 2, "value after drop");
    let plain = Semaphore::new(0)?;
    plain.release()?;
    check!(plain.get_value() == 1, "plain semaphore grows");
    check!(
        matches!(Semaphore::new(u32::MAX), Err(Error::InvalidValue(_))),
        "huge value"
    );
    check!(
        matches!(BoundedSemaphore::new(u32::MAX), Err(Error::InvalidValue(_))),
        "huge bounded value"
    );
    // Python's BoundedSemaphore(0) refuses every release not paired with an acquire.
    let zero = BoundedSemaphore::new(0)?;
    check!(
        matches!(zero.release(), Err(Error::TooManyReleases)),
        "BoundedSemaphore(0) accepted a release"
    );
    check!(zero.get_value() == 0, "value {}", zero.get_value());
    check!(
        zero.try_acquire().is_none(),
        "BoundedSemaphore(0) gave a unit"
    );
    Ok(())
}

/// Announces itself (under the lock, so the parent knows it is in `wait` once it can take the
/// lock and see the count), waits for a notification, counts the wake-up.
fn wait_for_notify((cond, c): (Condition, Cells)) {
    let _g = cond.lock().acquire().unwrap();
    c[1].fetch_add(1, SeqCst);
    let notified = cond.wait_timeout(LONG).unwrap();
    assert!(notified, "woken by the timeout, not by notify");
    c[0].fetch_add(1, SeqCst);
}

/// Polls `f` (taking `cond`'s lock each time) until it holds or `LONG` passes.
fn until(cond: &Condition, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + LONG;
    while Instant::now() < deadline {
        let g = cond.lock().acquire().unwrap();
        if f() {
            return true;
        }
        drop(g);
        std::thread::yield_now();
    }
    false
}

fn condition_notify_wakes_exactly_n(m: StartMethod) -> Result<(), Failed> {
    let cond = Condition::new()?;
    let c = cells()?;
    let ps: Vec<Process> = (0..3)
        .map(|_| start_daemon(m, wait_for_notify, (cond.clone(), c.clone())))
        .collect::<Result<_, _>>()?;
    check!(
        until(&cond, || c[1].load(SeqCst) == 3),
        "waiters never all waited"
    );
    {
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        cond.notify(2)?;
    }
    check!(
        until(&cond, || c[0].load(SeqCst) >= 2),
        "two notified waiters did not wake"
    );
    // The third is still asleep: give it time to (wrongly) wake. This sleep only leaves room
    // for a wrong wake-up; nothing waits on it.
    std::thread::sleep(Duration::from_millis(200));
    check!(
        c[0].load(SeqCst) == 2,
        "notify(2) woke {}",
        c[0].load(SeqCst)
    );
    {
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        cond.notify_all()?;
    }
    for p in &ps {
        check!(join(p)? == 0, "a waiter failed");
    }
    check!(c[0].load(SeqCst) == 3, "woken {}", c[0].load(SeqCst));
    Ok(())
}

/// Sets the value to 5 under the condition's lock and notifies.
fn produce_5((cond, c): (Condition<Lock>, Cells)) {
    let _g = cond.lock().acquire().unwrap();
    c[0].store(5, SeqCst);
    cond.notify_all().unwrap();
}

fn condition_wait_for_and_timeout(m: StartMethod) -> Result<(), Failed> {
    let cond = Condition::with_lock(Lock::new()?)?;
    let c = cells()?;
    // Without the lock: an error.
    check!(
        matches!(cond.notify(1), Err(Error::NotOwner)),
        "notify without the lock"
    );
    check!(
        matches!(cond.wait_timeout(Duration::ZERO), Err(Error::NotOwner)),
        "wait without the lock"
    );
    let g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
    let t = Instant::now();
    check!(
        !cond.wait_timeout(Duration::from_millis(150))?,
        "woken from nowhere"
    );
    check!(
        within(t, Duration::from_millis(150)),
        "wait_timeout took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    check!(
        !cond.wait_for(|| c[0].load(SeqCst) == 5, Some(Duration::from_millis(150)))?,
        "predicate true early"
    );
    check!(
        within(t, Duration::from_millis(150)),
        "wait_for timeout took {:?}",
        t.elapsed()
    );
    let p = start(m, produce_5, (cond.clone(), c.clone()))?;
    check!(
        cond.wait_for(|| c[0].load(SeqCst) == 5, Some(LONG))?,
        "predicate never true"
    );
    drop(g);
    check!(join(&p)? == 0, "producer failed");
    Ok(())
}

/// Waits at the barrier; records its index as a bit, counts the action.
fn party((b, c): (Barrier, Cells)) {
    let i = b.wait_with(|| {
        c[2].fetch_add(1, SeqCst);
    });
    let i = i.expect("barrier broken");
    c[0].fetch_or(1 << i, SeqCst);
}

fn barrier_of_3_distinct_indices(m: StartMethod) -> Result<(), Failed> {
    let b = Barrier::new(3, Some(LONG))?;
    check!(b.parties() == 3 && !b.broken(), "fresh barrier");
    let c = cells()?;
    // Two rounds: the barrier refills after draining.
    for round in 0..2 {
        c[0].store(0, SeqCst);
        let ps: Vec<Process> = (0..3)
            .map(|_| start(m, party, (b.clone(), c.clone())))
            .collect::<Result<_, _>>()?;
        for p in &ps {
            check!(join(p)? == 0, "a party failed in round {round}");
        }
        check!(
            c[0].load(SeqCst) == 0b111,
            "indices seen: {:b}",
            c[0].load(SeqCst)
        );
    }
    check!(
        c[2].load(SeqCst) == 2,
        "action ran {} times in 2 rounds",
        c[2].load(SeqCst)
    );
    check!(b.n_waiting() == 0, "n_waiting {}", b.n_waiting());
    Ok(())
}

/// Waits without a timeout; exits 0 if the barrier broke, 1 if it was passed.
fn expect_broken(b: Barrier) {
    std::process::exit(if b.wait() == Err(BrokenBarrier) { 0 } else { 1 });
}

fn wait_until_waiting(b: &Barrier, n: u32) -> bool {
    let deadline = Instant::now() + LONG;
    while b.n_waiting() < n {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

fn barrier_timeout_breaks_it_for_all(m: StartMethod) -> Result<(), Failed> {
    let b = Barrier::new(3, None)?;
    let p = start_daemon(m, expect_broken, b.clone())?;
    check!(wait_until_waiting(&b, 1), "the child never waited");
    let t = Instant::now();
    check!(
        b.wait_timeout(Duration::from_millis(150)) == Err(BrokenBarrier),
        "timeout did not break it"
    );
    check!(
        within(t, Duration::from_millis(150)),
        "timed out after {:?}",
        t.elapsed()
    );
    check!(b.broken(), "not marked broken");
    check!(join(&p)? == 0, "the other waiter was not told");
    check!(
        b.wait_timeout(Duration::ZERO) == Err(BrokenBarrier),
        "still broken for new waiters"
    );
    b.reset();
    check!(!b.broken(), "reset");
    Ok(())
}

fn barrier_abort_and_reset(m: StartMethod) -> Result<(), Failed> {
    let b = Barrier::new(2, None)?;
    let p = start_daemon(m, expect_broken, b.clone())?;
    check!(wait_until_waiting(&b, 1), "the child never waited");
    b.abort();
    check!(join(&p)? == 0, "abort did not break the waiter's wait");
    check!(b.broken(), "not broken after abort");
    b.reset();
    check!(!b.broken() && b.n_waiting() == 0, "reset");
    // Usable again: two parties pass.
    let c = cells()?;
    let q = start(m, party, (b.clone(), c.clone()))?;
    let mine = b.wait_timeout(LONG);
    check!(join(&q)? == 0, "party failed");
    check!(matches!(mine, Ok(0 | 1)), "index {mine:?}");
    Ok(())
}

/// The other side of a ping-pong: waits for its turn (1), hands it back (0), 1000 times.
fn pong((cond, turn): (Condition, Cells)) {
    for _ in 0..1000 {
        let _g = cond.lock().acquire().unwrap();
        while turn[0].load(SeqCst) != 1 {
            assert!(cond.wait_timeout(LONG).unwrap(), "pong starved");
        }
        turn[0].store(0, SeqCst);
        cond.notify(1).unwrap();
    }
}

fn condition_ping_pong(m: StartMethod) -> Result<(), Failed> {
    // A notifier that waits right after notifying must not take its own wake-up.
    let cond = Condition::new()?;
    let turn = cells()?;
    let p = start_daemon(m, pong, (cond.clone(), turn.clone()))?;
    for i in 0..1000 {
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        turn[0].store(1, SeqCst);
        cond.notify(1)?;
        while turn[0].load(SeqCst) != 0 {
            check!(cond.wait_timeout(LONG)?, "ping starved at round {i}");
        }
    }
    check!(join(&p)? == 0, "pong failed");
    Ok(())
}

/// Waits with a short timeout and reports whether it was notified (1) or timed out (0).
fn short_wait((cond, c): (Condition, Cells)) {
    let _g = cond.lock().acquire().unwrap();
    let notified = cond.wait_timeout(Duration::from_millis(100)).unwrap();
    c[0].fetch_add(if notified { 1 } else { 1000 }, SeqCst);
}

/// Waits (counted in `c[1]` under the lock) with a long timeout and reports whether it was
/// notified (1) or timed out (1000) in `c[0]`.
fn long_wait((cond, c): (Condition, Cells)) {
    let _g = cond.lock().acquire().unwrap();
    c[1].fetch_add(1, SeqCst);
    let notified = cond.wait_timeout(LONG).unwrap();
    c[0].fetch_add(if notified { 1 } else { 1000 }, SeqCst);
}

fn condition_no_leftover_grants(m: StartMethod) -> Result<(), Failed> {
    let cond = Condition::new()?;
    let c = cells()?;
    // Waiters that time out leave no wake-up behind for later ones.
    let ps: Vec<Process> = (0..2)
        .map(|_| start(m, short_wait, (cond.clone(), c.clone())))
        .collect::<Result<_, _>>()?;
    for p in &ps {
        check!(join(p)? == 0, "waiter failed");
    }
    check!(
        c[0].load(SeqCst) == 2000,
        "both should have timed out: {}",
        c[0].load(SeqCst)
    );
    {
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        check!(cond.waiting() == 0, "timed-out waiters still counted");
        cond.notify_all()?; // nobody waits: must grant nothing
    }
    // Waiters notified while they wait leave none either.
    c[0].store(0, SeqCst);
    let ps: Vec<Process> = (0..2)
        .map(|_| start_daemon(m, long_wait, (cond.clone(), c.clone())))
        .collect::<Result<_, _>>()?;
    check!(
        until(&cond, || c[1].load(SeqCst) == 2 && cond.waiting() == 2),
        "the waiters never waited"
    );
    {
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        cond.notify_all()?;
    }
    for p in &ps {
        check!(join(p)? == 0, "waiter failed");
    }
    check!(
        c[0].load(SeqCst) == 2,
        "both should have been notified: {}",
        c[0].load(SeqCst)
    );
    let g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
    check!(cond.waiting() == 0, "notified waiters still counted");
    check!(
        !cond.wait_timeout(Duration::from_millis(100))?,
        "woken by a stale grant"
    );
    drop(g);
    Ok(())
}

/// Waits again and again (counted in `c[1]` under the lock before each wait), counting each
/// notified return in `c[0]`, until `c[2]` says stop.
fn wait_repeatedly((cond, c): (Condition, Cells)) {
    let _g = cond.lock().acquire().unwrap();
    loop {
        c[1].fetch_add(1, SeqCst);
        assert!(cond.wait_timeout(LONG).unwrap(), "woken by the timeout");
        c[0].fetch_add(1, SeqCst);
        if c[2].load(SeqCst) == 1 {
            return;
        }
    }
}

/// `notify(n)` under the lock, then requires exactly `expect` notified returns in all, and
/// `registered` waits begun (the woken ones are back in `wait`); a short pause (with the lock
/// free) leaves room for a wrong extra wake-up to show.
fn notify_and_count(
    cond: &Condition,
    c: &Cells,
    n: u32,
    expect: u64,
    registered: u64,
) -> Result<(), Failed> {
    {
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        cond.notify(n)?;
    }
    check!(
        until(cond, || c[0].load(SeqCst) >= expect
            && c[1].load(SeqCst) >= registered),
        "notify({n}): {} woken, {} waits begun",
        c[0].load(SeqCst),
        c[1].load(SeqCst)
    );
    // Only widens the window for a wrong wake-up; nothing waits on it.
    std::thread::sleep(Duration::from_millis(200));
    check!(
        c[0].load(SeqCst) == expect,
        "notify({n}) woke {} in all, expected {expect}",
        c[0].load(SeqCst)
    );
    Ok(())
}

fn condition_dead_waiter_is_not_counted(m: StartMethod) -> Result<(), Failed> {
    // Issue 6 §1b.4: a waiter killed inside `wait` stayed counted, so after a notify_all a
    // later notify(1) woke two live waiters.
    let cond = Condition::new()?;
    let c = cells()?;
    // The doomed waiter waits first: the oldest, the first a notify(1) would pick.
    let doomed = start_daemon(m, wait_repeatedly, (cond.clone(), c.clone()))?;
    check!(until(&cond, || c[1].load(SeqCst) == 1), "first waiter");
    let live: Vec<Process> = (0..2)
        .map(|_| start_daemon(m, wait_repeatedly, (cond.clone(), c.clone())))
        .collect::<Result<_, _>>()?;
    check!(
        until(&cond, || c[1].load(SeqCst) == 3),
        "the waiters never all waited"
    );
    doomed.kill()?;
    check!(join(&doomed)? == -9, "exit code");
    // A live waiter wakes although the dead one is the oldest; it waits again.
    notify_and_count(&cond, &c, 1, 1, 4)?;
    // Both live ones wake, and wait again.
    notify_and_count(&cond, &c, u32::MAX, 3, 6)?;
    {
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        check!(cond.waiting() == 2, "{} counted as waiting", cond.waiting());
    }
    // Exactly one of the two live waiters.
    notify_and_count(&cond, &c, 1, 4, 7)?;
    {
        let _g = cond.lock().acquire().map_err(|e| format!("{e}"))?;
        c[2].store(1, SeqCst);
        cond.notify_all()?;
    }
    for p in &live {
        check!(join(p)? == 0, "a live waiter failed");
    }
    check!(c[0].load(SeqCst) == 6, "woken {}", c[0].load(SeqCst));
    check!(cond.waiting() == 0, "{} counted as waiting", cond.waiting());
    Ok(())
}

/// Releases twice: exits 0 if the first release is accepted exactly when `first_ok` and the
/// second is refused with `TooManyReleases`.
fn release_twice((sem, first_ok): (BoundedSemaphore, bool)) {
    let first = sem.release();
    let ok = match first {
        Ok(()) => first_ok,
        Err(Error::TooManyReleases) => !first_ok,
        Err(_) => false,
    };
    let second = matches!(sem.release(), Err(Error::TooManyReleases));
    std::process::exit(if ok && second { 0 } else { 1 });
}

fn bounded_semaphore_bound_holds_in_a_child(m: StartMethod) -> Result<(), Failed> {
    // BoundedSemaphore(0): no release at all (issue 6 §1.5: it used to accept one).
    let zero = BoundedSemaphore::new(0)?;
    let p = start(m, release_twice, (zero.clone(), false))?;
    check!(
        join(&p)? == 0,
        "BoundedSemaphore(0) accepted a release in the child"
    );
    check!(zero.get_value() == 0, "value {}", zero.get_value());
    // BoundedSemaphore(1) taken here: the child may give the unit back once.
    let one = BoundedSemaphore::new(1)?;
    one.acquire().leak();
    let p = start(m, release_twice, (one.clone(), true))?;
    check!(
        join(&p)? == 0,
        "BoundedSemaphore(1): wrong release results in the child"
    );
    check!(one.get_value() == 1, "value {}", one.get_value());
    Ok(())
}

/// Waits alone with the barrier's default timeout (given to the constructor, travelled with
/// the handle); exits 0 if that broke it after at least 200 ms and within 20 s.
fn wait_default_timeout(b: Barrier) {
    let t = Instant::now();
    let r = b.wait();
    let ok = r == Err(BrokenBarrier) && within(t, Duration::from_millis(200));
    std::process::exit(if ok { 0 } else { 1 });
}

fn barrier_default_timeout(m: StartMethod) -> Result<(), Failed> {
    // Python's Barrier(n, timeout=t): `wait()` without a timeout uses t.
    let b = Barrier::new(2, Some(Duration::from_millis(200)))?;
    let p = start_daemon(m, wait_default_timeout, b.clone())?;
    check!(
        join(&p)? == 0,
        "the child's wait() did not break after the default timeout"
    );
    check!(b.broken(), "not broken");
    check!(b.wait() == Err(BrokenBarrier), "still broken for wait()");
    b.reset();
    let t = Instant::now();
    check!(
        b.wait() == Err(BrokenBarrier),
        "the parent's wait() passed alone"
    );
    check!(
        within(t, Duration::from_millis(200)),
        "default timeout took {:?}",
        t.elapsed()
    );
    Ok(())
}

fn barrier_panicking_action(m: StartMethod) -> Result<(), Failed> {
    // The last party's action panics: that party gets the error, the barrier breaks for
    // the two parties already waiting in other processes.
    let b = Barrier::new(3, None)?;
    let ps: Vec<Process> = (0..2)
        .map(|_| start_daemon(m, expect_broken, b.clone()))
        .collect::<Result<_, _>>()?;
    check!(wait_until_waiting(&b, 2), "the children never waited");
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = b.wait_with(|| panic!("the action failed"));
    std::panic::set_hook(hook);
    check!(r == Err(BrokenBarrier), "the panicking party got {r:?}");
    check!(b.broken(), "not broken");
    for p in &ps {
        check!(join(p)? == 0, "a waiting party was not told");
    }
    Ok(())
}

/// A party that never arrives (it is killed first).
fn never_arrive(_b: Barrier) {
    std::thread::sleep(Duration::from_secs(3600));
}

fn barrier_dead_party(m: StartMethod) -> Result<(), Failed> {
    // A party killed after it arrived still counts as arrived: the others complete the cycle.
    let b = Barrier::new(3, Some(LONG))?;
    let c = cells()?;
    let dead = start_daemon(m, party, (b.clone(), c.clone()))?;
    check!(wait_until_waiting(&b, 1), "the first party never waited");
    dead.kill()?;
    check!(join(&dead)? == -9, "exit code");
    let other = start_daemon(m, party, (b.clone(), c.clone()))?;
    let mine = b.wait();
    check!(join(&other)? == 0, "the other party failed");
    check!(matches!(mine, Ok(0..=2)), "index {mine:?}");
    check!(!b.broken() && b.n_waiting() == 0, "{b:?}");
    // A party killed before it arrives cannot be told from a slow one: the others are
    // released by the barrier's timeout, broken, instead of hanging.
    let b = Barrier::new(3, Some(Duration::from_millis(300)))?;
    let absent = start_daemon(m, never_arrive, b.clone())?;
    let waiting = start_daemon(m, expect_broken, b.clone())?;
    check!(wait_until_waiting(&b, 1), "the waiting party never waited");
    let t = Instant::now();
    absent.kill()?;
    check!(join(&absent)? == -9, "exit code");
    check!(
        b.wait() == Err(BrokenBarrier),
        "passed without the dead party"
    );
    check!(
        join(&waiting)? == 0,
        "the waiting party was not released broken"
    );
    check!(
        t.elapsed() < Duration::from_secs(20),
        "released after {:?}",
        t.elapsed()
    );
    Ok(())
}

/// Where `record_last_party` writes: a file named after the test process.
fn action_file(test_pid: u32) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("multiproc-barrier-action-{test_pid}"))
}

/// A Barrier action: records which process ran it.
fn record_last_party(_: ()) {
    let test_pid = multiproc_core::parent_process().map_or(std::process::id(), |p| p.pid());
    let me = multiproc_core::current_process();
    std::fs::write(action_file(test_pid), format!("{} {}", me.name, me.pid)).unwrap();
}

fn wait_ok(b: Barrier) {
    std::process::exit(if b.wait().is_ok() { 0 } else { 1 });
}

fn barrier_stored_action_runs_in_the_last_party(m: StartMethod) -> Result<(), Failed> {
    let file = action_file(std::process::id());
    let _ = std::fs::remove_file(&file);
    let b = Barrier::with_action(3, record_last_party, None)?;
    let first: Vec<Process> = (0..2)
        .map(|_| start_daemon(m, wait_ok, b.clone()))
        .collect::<Result<_, _>>()?;
    check!(wait_until_waiting(&b, 2), "the children never waited");
    // The third party arrives last, in its own process: the action travelled with the barrier.
    let last = start_daemon(m, wait_ok, b.clone())?;
    for p in first.iter().chain([&last]) {
        check!(join(p)? == 0, "{} was not released", p.name());
    }
    let said = std::fs::read_to_string(&file)?;
    let _ = std::fs::remove_file(&file);
    check!(
        said == format!("{} {}", last.name(), last.pid().unwrap()),
        "the action ran in {said:?}, not in the last party {}",
        last.name()
    );
    Ok(())
}

fn panicking_action(_: ()) {
    panic!("the stored action failed")
}

fn barrier_stored_action_panic_breaks_it(m: StartMethod) -> Result<(), Failed> {
    let b = Barrier::with_action(2, panicking_action, None)?;
    let p = start_daemon(m, expect_broken, b.clone())?;
    check!(wait_until_waiting(&b, 1), "the child never waited");
    // The panic is caught quietly and breaks the barrier for both parties.
    check!(
        b.wait() == Err(BrokenBarrier),
        "the last party was not told"
    );
    check!(b.broken(), "not broken");
    check!(join(&p)? == 0, "the waiting party was not told");
    Ok(())
}
