//! The shared heap across processes and over long runs: memory is reused, bounded, and never
//! reused while another process still holds it.
//!
//! A `harness = false` binary (libtest-mimic with one test thread), so the process is
//! single-threaded and the fork method is allowed.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::Instant;

use multiproc_core::StartMethod;
use multiproc_core::heap::{Region, Shared};
use multiproc_testkit::{End, Failed, TestFn, Trial, check, join, start};

fn main() {
    let tests: &[(&str, TestFn)] = &[
        (
            "a_block_held_by_a_child_is_not_reused",
            a_block_held_by_a_child_is_not_reused,
        ),
        (
            "blocks_are_reused_after_the_child_exits",
            blocks_are_reused_after_the_child_exits,
        ),
    ];
    let mut trials = multiproc_testkit::trials(tests);
    trials.push(Trial::test("memory_bounded", memory_bounded));
    multiproc_testkit::run(trials)
}

type Small = Shared<[AtomicU64; 4]>;
/// 512 KiB: a large object, in a segment of its own.
type Large = Shared<[AtomicU64; 65536]>;

/// The child's side: checks the values, says ready, waits for the parent's churn, checks again.
fn hold_and_check((small, large, to_parent, from_parent): (Small, Large, End, End)) {
    let read = || (small[0].load(SeqCst), large[65535].load(SeqCst));
    to_parent.send(&format!("{:?}", read()));
    let _ = from_parent.line();
    to_parent.send(&format!("{:?}", read()));
    // Writes of the parent's new objects must not show here, and ours must not show there.
    small[1].store(1, SeqCst);
}

fn a_block_held_by_a_child_is_not_reused(m: StartMethod) -> Result<(), Failed> {
    let small: Small = Shared::new()?;
    let large: Large = Shared::new()?;
    small[0].store(42, SeqCst);
    large[65535].store(7, SeqCst);
    let (small_addr, large_addr) = (&*small as *const _ as usize, &*large as *const _ as usize);
    let (from_child, to_parent) = End::pair();
    let (from_parent, to_child) = End::pair();
    let p = start(m, hold_and_check, (small, large, to_parent, from_parent))?;
    check!(
        from_child.line()? == "(42, 7)",
        "child saw other values first"
    );
    // The parent's handles are gone (moved into the Process, dropped by start()). Churn: a
    // create+drop loop takes a freed block first, then keep many.
    for _ in 0..1000 {
        let s: Small = Shared::new()?;
        check!(s[0].load(SeqCst) == 0, "a new object is not zeroed");
        s[0].store(0xdead, SeqCst);
    }
    let mut kept = Vec::new();
    for _ in 0..20_000 {
        let s: Small = Shared::new()?;
        s[0].store(0xdead, SeqCst);
        kept.push(s);
    }
    let mut kept_large = Vec::new();
    for _ in 0..4 {
        drop(Large::new()?);
        let l: Large = Shared::new()?;
        l[65535].store(0xdead, SeqCst);
        kept_large.push(l);
    }
    let reused_small = kept.iter().any(|s| &**s as *const _ as usize == small_addr);
    let reused_large = kept_large
        .iter()
        .any(|l| &**l as *const _ as usize == large_addr);
    to_child.send("go");
    let after = from_child.line()?;
    check!(join(&p)? == 0, "child failed");
    check!(after == "(42, 7)", "the child's objects changed: {after}");
    check!(
        !reused_small && !reused_large,
        "a block the child holds was reused"
    );
    check!(
        kept.iter().all(|s| s[1].load(SeqCst) == 0),
        "a child's write shows in a new object"
    );
    Ok(())
}

/// Holds its objects until told, then returns (dropping them).
fn hold_until((small, to_parent, from_parent): (Small, End, End)) {
    to_parent.send(&small[0].load(SeqCst).to_string());
    let _ = from_parent.line();
}

fn blocks_are_reused_after_the_child_exits(m: StartMethod) -> Result<(), Failed> {
    let small: Small = Shared::new()?;
    small[0].store(5, SeqCst);
    let addr = &*small as *const _ as usize;
    let (from_child, to_parent) = End::pair();
    let (from_parent, to_child) = End::pair();
    let p = start(m, hold_until, (small, to_parent, from_parent))?;
    check!(from_child.line()? == "5", "child saw another value");
    to_child.send("go");
    check!(join(&p)? == 0, "child failed");
    // Every reference is gone: the block comes back, zeroed, at the latest when the arena
    // would otherwise grow (a fork child's references are released when it has exited).
    let mut kept = Vec::new();
    for _ in 0..40_000 {
        let s: Small = Shared::new()?;
        if &*s as *const _ as usize == addr {
            check!(s[0].load(SeqCst) == 0, "a reused block is not zeroed");
            return Ok(());
        }
        kept.push(s);
    }
    Err("the block was never reused".into())
}

/// Mappings of this process (lines of `/proc/self/maps`).
fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

/// Resident memory of this process in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The keep-a-few pattern of issue 6 and plain create+drop loops leave the number of mappings
/// and the resident memory within a small bound.
fn memory_bounded() -> Result<(), Failed> {
    // Counts: in debug builds 10^6 small objects take a few seconds on a small machine.
    const LOCKS: usize = 1_000_000;
    const REGIONS: usize = 100_000;
    let report = |what: &str, t: Instant, maps0: usize, rss0: u64| {
        println!(
            "memory_bounded: {what}: {} mappings (+{}), RSS {} KiB (+{}), {:.2} s",
            mappings(),
            mappings() as i64 - maps0 as i64,
            rss_kib(),
            rss_kib() as i64 - rss0 as i64,
            t.elapsed().as_secs_f64()
        );
    };
    // Warm up: the first arena, the allocator's tables.
    drop(Shared::<[AtomicU32; 4]>::new()?);
    drop(Region::new(4096, 8)?);
    let (maps0, rss0) = (mappings(), rss_kib());
    println!("memory_bounded: start: {maps0} mappings, RSS {rss0} KiB");

    let t = Instant::now();
    let mut locks = Vec::new();
    for i in 0..LOCKS {
        let l: Shared<[AtomicU32; 4]> = Shared::new()?;
        l[0].store(i as u32, SeqCst);
        if i % 1000 == 0 {
            locks.push(l);
        }
    }
    report("1e6 lock-sized objects, 1 in 1000 kept", t, maps0, rss0);
    let t = Instant::now();
    let mut regions = Vec::new();
    for i in 0..REGIONS {
        let r = Region::new(4096, 8)?;
        if i % 100 == 0 {
            regions.push(r);
        }
    }
    report("1e5 4-KiB regions, 1 in 100 kept", t, maps0, rss0);
    let (maps1, rss1) = (mappings(), rss_kib());
    // 1000 kept regions are 4 MiB (4 arenas) and the kept locks 64 KiB.
    check!(
        maps1 <= maps0 + 12,
        "{maps1} mappings after keep-a-few (from {maps0})"
    );
    check!(
        rss1 <= rss0 + 24 * 1024,
        "RSS {rss1} KiB after keep-a-few (from {rss0})"
    );

    let t = Instant::now();
    for _ in 0..LOCKS {
        drop(Shared::<[AtomicU32; 8]>::new()?);
    }
    for _ in 0..REGIONS {
        drop(Region::new(4096, 8)?);
    }
    for _ in 0..200 {
        // An Array of 10^6 doubles.
        drop(Region::new(8_000_000, 8)?);
    }
    report("create+drop loops", t, maps0, rss0);
    let (maps2, rss2) = (mappings(), rss_kib());
    check!(
        maps2 <= maps1 + 4,
        "{maps2} mappings after create+drop (from {maps1})"
    );
    check!(
        rss2 <= rss1 + 16 * 1024,
        "RSS {rss2} KiB after create+drop (from {rss1})"
    );

    drop(locks);
    drop(regions);
    report("everything dropped", Instant::now(), maps0, rss0);
    Ok(())
}
