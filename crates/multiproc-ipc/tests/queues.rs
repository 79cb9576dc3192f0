//! Queues crossing processes, under every start method: many producers and consumers, items
//! larger than the ring, producers and consumers killed in the middle of their work.
//!
//! `harness = false`: one test thread, trials on the main thread, so fork is allowed. Children
//! are daemons, so a failed check never leaves one blocking the binary's exit.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Instant;

use multiproc_core::StartMethod;
use multiproc_core::heap::{ATOMIC_KINDS, Shared, SharedSlice};
use multiproc_ipc::{
    Connection, GetError, JoinableQueue, Queue, QueueBuilder, SimpleQueue, socketpair,
};
use multiproc_testkit::{Failed, LONG, TestFn, check, join, join_all, start_daemon as start};
use serde::{Deserialize, Serialize};

fn main() {
    let tests: &[(&str, TestFn)] = &[
        (
            "fifo_per_producer_4_producers_2_consumers",
            fifo_per_producer_4_producers_2_consumers,
        ),
        (
            "large_items_through_a_small_ring",
            large_items_through_a_small_ring,
        ),
        (
            "simple_queue_across_processes",
            simple_queue_across_processes,
        ),
        (
            "unbounded_put_beyond_the_ring_does_not_block",
            unbounded_put_beyond_the_ring_does_not_block,
        ),
        (
            "joinable_join_after_last_task_done",
            joinable_join_after_last_task_done,
        ),
        (
            "queue_inside_a_struct_argument",
            queue_inside_a_struct_argument,
        ),
        ("queue_sent_over_a_connection", queue_sent_over_a_connection),
        (
            "producer_killed_in_a_put_loop_loses_nothing_it_completed",
            producer_killed_in_a_put_loop_loses_nothing_it_completed,
        ),
        (
            "consumer_killed_mid_get_loses_at_most_one_item",
            consumer_killed_mid_get_loses_at_most_one_item,
        ),
        (
            "dropping_every_handle_frees_the_ring",
            dropping_every_handle_frees_the_ring,
        ),
    ];
    let trials = multiproc_testkit::trials(tests);
    multiproc_testkit::run(trials);
}

/// Gets with the long deadline, so a broken test fails instead of hanging.
fn get<T: Serialize + serde::de::DeserializeOwned>(q: &Queue<T>) -> Result<T, Failed> {
    q.get_timeout(LONG)
        .map_err(|e| format!("no item within {LONG:?}: {e}").into())
}

type Item = Option<(u8, u32)>;

fn producer((q, id, n): (Queue<Item>, u8, u32)) {
    for i in 0..n {
        q.put(Some((id, i))).unwrap();
    }
}

/// Takes items until `None`, then sends back what it got, in order.
fn consumer((q, out): (Queue<Item>, Queue<Vec<(u8, u32)>>)) {
    let mut got = Vec::new();
    while let Some(item) = q.get_timeout(LONG).unwrap() {
        got.push(item);
    }
    out.put(got).unwrap();
}

fn fifo_per_producer_4_producers_2_consumers(m: StartMethod) -> Result<(), Failed> {
    const N: u32 = 10_000;
    let q: Queue<Item> = Queue::new()?;
    let out: Queue<Vec<(u8, u32)>> = Queue::new()?;
    let consumers = [
        start(m, consumer, (q.clone(), out.clone()))?,
        start(m, consumer, (q.clone(), out.clone()))?,
    ];
    let producers: Vec<_> = (0..4u8)
        .map(|id| start(m, producer, (q.clone(), id, N)))
        .collect::<Result<_, _>>()?;
    join_all(&producers)?;
    q.put(None)?;
    q.put(None)?;
    let mut seen = HashSet::new();
    for _ in 0..2 {
        let got = get(&out)?;
        let mut next = [0u32; 4];
        for &(id, i) in &got {
            check!(
                i >= next[id as usize],
                "producer {id}: {i} after {}",
                next[id as usize]
            );
            next[id as usize] = i + 1;
            check!(seen.insert((id, i)), "({id}, {i}) delivered twice");
        }
    }
    check!(
        seen.len() == 4 * N as usize,
        "{} of {} items arrived",
        seen.len(),
        4 * N
    );
    join_all(&consumers)?;
    check!(
        q.empty() && q.qsize() == 0,
        "queue not empty: {}",
        q.qsize()
    );
    Ok(())
}

fn pattern(i: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|b| (b as u32).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

fn big_producer((q, sq): (Queue<Vec<u8>>, SimpleQueue<Vec<u8>>)) {
    for i in 0..8u32 {
        q.put(pattern(i, 1 << 20)).unwrap();
        sq.put(pattern(i + 100, (1 << 20) + i as usize)).unwrap();
    }
}

fn large_items_through_a_small_ring(m: StartMethod) -> Result<(), Failed> {
    // 1 MiB items through 64 KiB rings: chunked, for both kinds of queue.
    let b = QueueBuilder::new().ring_bytes(64 << 10);
    let q: Queue<Vec<u8>> = b.build()?;
    let sq: SimpleQueue<Vec<u8>> = b.build_simple()?;
    let p = start(m, big_producer, (q.clone(), sq.clone()))?;
    for i in 0..8u32 {
        let item = get(&q)?;
        check!(item == pattern(i, 1 << 20), "queue item {i} corrupt");
        let item = sq.get_timeout(LONG)?;
        check!(
            item == pattern(i + 100, (1 << 20) + i as usize),
            "simple queue item {i} corrupt"
        );
    }
    check!(join(&p)? == 0, "producer failed");
    Ok(())
}

fn simple_echo((inq, outq): (SimpleQueue<u64>, SimpleQueue<u64>)) {
    loop {
        let n = inq.get_timeout(LONG).unwrap();
        outq.put(n * 2).unwrap();
        if n == 0 {
            break;
        }
    }
}

fn simple_queue_across_processes(m: StartMethod) -> Result<(), Failed> {
    let inq = SimpleQueue::new()?;
    let outq = SimpleQueue::new()?;
    let p = start(m, simple_echo, (inq.clone(), outq.clone()))?;
    for n in [21u64, 5, 1000, 0] {
        inq.put(n)?;
        check!(outq.get_timeout(LONG)? == n * 2, "echo of {n}");
    }
    check!(join(&p)? == 0, "child failed");
    check!(inq.empty() && outq.empty(), "queues not empty");
    Ok(())
}

/// Puts more than its ring holds before anyone reads, then returns (its feeder flushes when
/// its last handle is dropped, before the process exits).
fn flood(q: Queue<u32>) {
    for i in 0..20_000 {
        q.put(i).unwrap();
    }
}

fn unbounded_put_beyond_the_ring_does_not_block(m: StartMethod) -> Result<(), Failed> {
    let q: Queue<u32> = QueueBuilder::new().ring_bytes(4096).build()?;
    let p = start(m, flood, q.clone())?;
    for i in 0..20_000 {
        let got = get(&q)?;
        check!(got == i, "item {i} came as {got}");
    }
    check!(join(&p)? == 0, "producer failed");
    // And in this process: the puts return at once with nobody reading.
    for i in 0..20_000 {
        q.put(i)?;
    }
    check!(q.qsize() == 20_000, "qsize {}", q.qsize());
    for i in 0..20_000 {
        check!(get(&q)? == i, "local item {i}");
    }
    Ok(())
}

fn worker((q, done): (JoinableQueue<u32>, Shared<AtomicU64>)) {
    while let Ok(n) = q.get_timeout(LONG) {
        done.fetch_add(u64::from(n), SeqCst);
        q.task_done().unwrap();
        if n == 0 {
            break;
        }
    }
}

fn joinable_join_after_last_task_done(m: StartMethod) -> Result<(), Failed> {
    let q: JoinableQueue<u32> = JoinableQueue::new()?;
    let done: Shared<AtomicU64> = Shared::new()?;
    for n in 1..=100 {
        q.put(n)?;
    }
    q.put(0)?;
    let p = start(m, worker, (q.clone(), done.clone()))?;
    check!(q.join_timeout(LONG).is_ok(), "join did not return");
    // Every task was done before join returned.
    check!(done.load(SeqCst) == 5050, "done {}", done.load(SeqCst));
    check!(
        q.unfinished_tasks() == 0,
        "unfinished {}",
        q.unfinished_tasks()
    );
    check!(q.task_done().is_err(), "task_done beyond the items put");
    check!(join(&p)? == 0, "worker failed");
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Job {
    name: String,
    results: Queue<String>,
    inbox: SimpleQueue<u32>,
}

fn job_runner(job: Job) {
    let n = job.inbox.get_timeout(LONG).unwrap();
    job.results.put(format!("{} got {n}", job.name)).unwrap();
}

fn queue_inside_a_struct_argument(m: StartMethod) -> Result<(), Failed> {
    let results = Queue::new()?;
    let inbox = SimpleQueue::new()?;
    let job = Job {
        name: "job-1".into(),
        results: results.clone(),
        inbox: inbox.clone(),
    };
    let p = start(m, job_runner, job)?;
    inbox.put(7)?;
    check!(get(&results)? == "job-1 got 7", "wrong result");
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

/// Receives a queue over the connection (after it started), answers on it, then says so.
fn queue_receiver(mut conn: Connection) {
    let q: Queue<String> = conn.recv().unwrap();
    let n: u32 = q.get_timeout(LONG).unwrap().parse().unwrap();
    q.put((n + 1).to_string()).unwrap();
    conn.send(&1u8).unwrap();
}

fn queue_sent_over_a_connection(m: StartMethod) -> Result<(), Failed> {
    let (mut mine, theirs) = socketpair()?;
    let p = start(m, queue_receiver, theirs)?;
    let q: Queue<String> = Queue::new()?;
    mine.send(&q)?;
    q.put("41".into())?;
    check!(mine.poll(Some(LONG))?, "the child never answered");
    let _: u8 = mine.recv()?;
    check!(get(&q)? == "42", "wrong answer");
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

/// Puts sequence numbers as fast as it can; after each `put` returns, records how many it
/// completed. `Left`: a `Queue` of small items (a ring with room: never parked); `Right`: a
/// `SimpleQueue` with a large item (chunked) every 16th.
type Sink = Result<Queue<(u32, Vec<u8>)>, SimpleQueue<(u32, Vec<u8>)>>;

fn tight_putter((q, completed): (Sink, Shared<AtomicU64>)) {
    for i in 0u32.. {
        match &q {
            Ok(q) => q.put((i, vec![i as u8; (i % 40) as usize])).unwrap(),
            Err(sq) => {
                let len = if i % 16 == 15 {
                    40_000
                } else {
                    (i % 40) as usize
                };
                sq.put((i, vec![i as u8; len])).unwrap()
            }
        }
        completed.store(u64::from(i) + 1, SeqCst);
    }
}

fn producer_killed_in_a_put_loop_loses_nothing_it_completed(m: StartMethod) -> Result<(), Failed> {
    // A bounded queue whose ring always has room for `maxsize` small items (nothing is ever
    // parked in a feeder, so every completed put is in shared memory), and a simple queue
    // that also carries items larger than a quarter of its ring.
    let q: Queue<(u32, Vec<u8>)> = QueueBuilder::new()
        .maxsize(64)
        .ring_bytes(64 << 10)
        .build()?;
    let sq: SimpleQueue<(u32, Vec<u8>)> =
        QueueBuilder::new().ring_bytes(64 << 10).build_simple()?;
    let rounds = 100u32;
    let mut total = 0u32;
    let mut seed = 0x2545_f491_u32;
    for round in 0..2 * rounds {
        let simple = round % 2 == 1;
        let get_one = |timeout: Option<std::time::Duration>| -> Result<(u32, Vec<u8>), GetError> {
            match (simple, timeout) {
                (false, Some(t)) => q.get_timeout(t),
                (false, None) => q.try_get(),
                (true, Some(t)) => sq.get_timeout(t),
                (true, None) => sq.try_get(),
            }
        };
        let sink: Sink = if simple {
            Err(sq.clone())
        } else {
            Ok(q.clone())
        };
        let completed: Shared<AtomicU64> = Shared::new()?;
        let p = start(m, tight_putter, (sink, completed.clone()))?;
        // Take a pseudo-random number of items, then kill it in the middle of its loop.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let take = seed % 200;
        let mut local = 0u32;
        for _ in 0..take {
            let (i, body) = get_one(Some(LONG))?;
            check!(i == local, "round {round}: item {local} came as {i}");
            check!(
                body.iter().all(|&b| b == i as u8),
                "round {round}: item {i} corrupt"
            );
            local += 1;
        }
        p.kill()?;
        check!(join(&p)? == -9, "round {round}: exit code");
        let done = completed.load(SeqCst) as u32;
        // Everything it completed is there, in order, whole; at most the one in flight more.
        loop {
            match get_one(None) {
                Ok((i, body)) => {
                    check!(
                        i == local,
                        "round {round}: item {local} came as {i} after the kill"
                    );
                    check!(
                        body.iter().all(|&b| b == i as u8),
                        "round {round}: item {i} corrupt"
                    );
                    local += 1;
                }
                Err(GetError::Empty) => break,
                Err(e) => return Err(format!("round {round}: {e}").into()),
            }
        }
        check!(
            local == done || local == done + 1,
            "round {round}: {local} items readable, {done} completed"
        );
        // Still usable: our own put and get (taking the producer side over if it died there).
        if simple {
            sq.put_timeout((u32::MAX, vec![]), LONG)?;
        } else {
            q.put_timeout((u32::MAX, vec![]), LONG)?;
        }
        check!(
            get_one(Some(LONG))?.0 == u32::MAX,
            "round {round}: queue unusable after the kill"
        );
        total += local;
    }
    check!(total > 0, "no items at all");
    Ok(())
}

/// Takes items as fast as it can, marking each seen in the bitmap right after `get`.
fn tight_getter((q, seen): (Queue<(u32, Vec<u8>)>, SharedSlice<AtomicU64>)) {
    loop {
        let (i, _) = q.get().unwrap();
        seen[(i / 64) as usize].fetch_or(1 << (i % 64), SeqCst);
        seen[seen.len() - 1].fetch_add(1, SeqCst);
    }
}

fn consumer_killed_mid_get_loses_at_most_one_item(m: StartMethod) -> Result<(), Failed> {
    const N: u32 = 4000;
    let words = (N / 64 + 2) as usize;
    for round in 0..10u32 {
        let q: Queue<(u32, Vec<u8>)> = QueueBuilder::new().ring_bytes(64 << 10).build()?;
        let seen: SharedSlice<AtomicU64> = SharedSlice::new(words, ATOMIC_KINDS + 0x40)?;
        let p = start(m, tight_getter, (q.clone(), seen.clone()))?;
        for i in 0..N {
            let body = if i % 25 == 24 {
                vec![i as u8; 60_000]
            } else {
                vec![i as u8; 8]
            };
            q.put((i, body))?;
        }
        // Kill it at a point that moves with the round.
        let at = u64::from(200 + round * 300);
        let deadline = Instant::now() + LONG;
        while seen[words - 1].load(SeqCst) < at {
            check!(
                Instant::now() < deadline,
                "round {round}: the consumer stalled"
            );
            std::thread::yield_now();
        }
        p.kill()?;
        check!(join(&p)? == -9, "exit code");
        let mut mine = HashSet::new();
        let deadline = Instant::now() + LONG;
        loop {
            check!(
                Instant::now() < deadline,
                "round {round}: {} items never became gettable",
                q.qsize()
            );
            match q.try_get() {
                Ok((i, body)) => {
                    check!(body.iter().all(|&b| b == i as u8), "item {i} corrupt");
                    check!(mine.insert(i), "item {i} twice");
                }
                Err(GetError::Empty) => {
                    if q.qsize() == 0 {
                        break;
                    }
                    // The dead consumer's lock is being taken over: try again.
                    std::thread::yield_now();
                }
                Err(e) => return Err(format!("round {round}: {e}").into()),
            }
        }
        let mut missing = 0;
        for i in 0..N {
            let theirs = seen[(i / 64) as usize].load(SeqCst) & (1 << (i % 64)) != 0;
            let ours = mine.contains(&i);
            check!(!(theirs && ours), "round {round}: item {i} delivered twice");
            if !theirs && !ours {
                missing += 1;
            }
        }
        check!(missing <= 1, "round {round}: {missing} items lost");
    }
    Ok(())
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Memory stays flat over 10,000 queues created, used by a child (the first one) and
/// dropped: a ring nobody holds is freed and reused. (Here, not in the crate's unit tests:
/// this harness runs one trial at a time, so nothing else allocates meanwhile.)
fn dropping_every_handle_frees_the_ring(m: StartMethod) -> Result<(), Failed> {
    let cycle = |n: u32| -> Result<(), Failed> {
        let q: Queue<Vec<u8>> = Queue::new()?;
        q.put(vec![n as u8; 300])?;
        check!(get(&q)?.len() == 300, "item");
        Ok(())
    };
    // One queue crosses to a child and back, so the child's reference is released too.
    let q: Queue<(u32, Vec<u8>)> = Queue::new()?;
    let completed: Shared<AtomicU64> = Shared::new()?;
    let p = start(m, tight_putter, (Ok(q.clone()), completed))?;
    check!(get(&q)?.0 == 0, "first item");
    p.kill()?;
    join(&p)?;
    drop(q);
    for n in 0..500 {
        cycle(n)?;
    }
    let before = rss_kib();
    for n in 0..10_000 {
        cycle(n)?;
    }
    let grew = rss_kib().saturating_sub(before);
    // 10,000 rings of 256 KiB would be 2.5 GB.
    check!(grew < 8 * 1024, "RSS grew by {grew} KiB over 10,000 queues");
    Ok(())
}
