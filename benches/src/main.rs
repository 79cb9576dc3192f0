//! `multiproc-benches`: multiproc's figures next to the machine's raw limits, in one run.
//!
//! Prints `name<TAB>median<TAB>unit` lines (the reference harness's output contract) with the
//! figure names of CPython's `mp_bench.py` for multiproc and of `bench/limits/*.c` for the raw
//! limits; `#spread` and `#meta` lines go to stderr. Figures that are compared with each other
//! are measured alternately in the same rounds (see [`report::run_rotated`]).
//! `cargo xtask bench` runs this binary and the Python twin and writes `docs/benchmarks.md`.
//!
//! ```text
//! multiproc-benches [--only GROUP|FAMILY[,...]] [--reps N] [--quick] [--limits-out FILE] [--list]
//! ```

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "printing figures is what a benchmark binary is for"
)]

mod limits;
mod manager;
mod mp;
mod pool;
mod report;

use std::path::PathBuf;
use std::time::Instant;

use report::{Bench, Out, Res, meta, run_rotated};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
/// The resident heap of the parent for the `.rss256MiB` figures.
const BALLAST: usize = 256 * MIB;

/// Operation groups, in run order.
const GROUPS: &[(&str, &str)] = &[
    (
        "proc",
        "start+join of a no-op child per start method; raw fork+_exit+waitpid, posix_spawn /bin/true",
    ),
    (
        "proc.rss256MiB",
        "the same from a parent holding 256 MiB of touched heap",
    ),
    (
        "pipe.roundtrip",
        "64 B round trip with a child (duplex and simplex); raw pipe and socketpair ping-pong",
    ),
    (
        "pipe.throughput",
        "child sends 1 KiB / 64 KiB / 16 MiB messages; raw pipe and socketpair streams",
    ),
    (
        "listener.roundtrip",
        "64 B round trip over Listener/Client connections with an authkey (Unix, TCP); raw socketpair and TCP ping-pong",
    ),
    (
        "locks.uncontended",
        "Lock/RLock acquire+release, Value += 1 under its lock; raw sem_t, futex, pthread, spin locks",
    ),
    (
        "locks.contended2p",
        "two processes increment a locked Value 100,000 times each; the same on raw locks",
    ),
    (
        "array",
        "a child fills an Array of 10^6 doubles three ways; raw 8 MB shm fill by a child",
    ),
    (
        "shm.1MiB",
        "SharedMemory create/attach/close+unlink of 1 MiB; raw shm_open+ftruncate+mmap",
    ),
    (
        "shm.256MiB",
        "a child writes 256 MiB into a fresh SharedMemory, the parent reads it; raw shm_open+mmap",
    ),
    (
        "sync.pingpong",
        "Event, Barrier(2), Condition ping-pong with a child; raw shared futex and sem_t ping-pong",
    ),
    (
        "queue.throughput",
        "Queue/SimpleQueue: 100,000 ints from 1 or 4 children; raw SPSC ring of u64",
    ),
    (
        "queue.roundtrip",
        "Queue/SimpleQueue: int put, child gets and puts it back on a second queue; raw shared futex ping-pong",
    ),
    (
        "queue.item_1MiB",
        "a child puts 1 MiB byte strings into a Queue; raw memcpy bandwidth",
    ),
    (
        "pool.create",
        "Pool::new(2), close, join; raw fork+_exit+waitpid",
    ),
    (
        "pool.map",
        "map of 100,000 ident tasks (default chunk size) and of 10,000 in chunks of 1, 2 workers; raw rate of 12-byte pipe messages",
    ),
    (
        "pool.apply_async",
        "apply_async(noop).get() round trip on 2 workers; raw pipe ping-pong",
    ),
    (
        "pool.imap_unordered",
        "imap_unordered of 10,000 ident tasks in chunks of 1 and 100,000 in chunks of 100; raw rate of 12-byte pipe messages",
    ),
    (
        "pool.cpu",
        "200 CPU tasks serially and through map on 2 workers; raw speed-up of 2 forked processes",
    ),
    (
        "executor",
        "ProcessPoolExecutor(2): submit(noop).result() round trip, map of 10,000 / 100,000 ident tasks in chunks of 1 / 1000; raw pipe ping-pong and small-message rate",
    ),
    (
        "manager",
        "Manager (fork): dict set/get, queue put/get, list append from a child (2,000 each), 8 children setting keys of one dict, start+shutdown; raw socketpair ping-pong, fork+_exit+waitpid",
    ),
];

/// Figure families; `--only` accepts these next to group names.
const FAMILIES: &[(&str, &str)] = &[
    ("mp", "multiproc's figures (names of mp_bench.py)"),
    (
        "limits",
        "raw limits over libc/rustix (names of bench/limits)",
    ),
];

#[derive(Debug)]
struct Args {
    groups: Vec<String>,
    mp: bool,
    limits: bool,
    reps: Option<usize>,
    quick: bool,
    limits_out: Option<PathBuf>,
}

fn usage() -> String {
    let mut s = String::from(
        "usage: multiproc-benches [--only GROUP|FAMILY[,...]] [--reps N] [--quick] [--limits-out FILE] [--list]\n\
         \n\
         --only       groups and/or families to run (default: all); a group prefix selects its subgroups;\n\
         \x20            groups and families combine: `--only proc,limits` runs the raw limits of `proc`\n\
         --reps N     rounds (repetitions) of every figure; default 15 proc, 7 proc.rss256MiB,\n\
         \x20            15 pipe.roundtrip, 7 pipe.throughput, 15 listener.roundtrip, 15 locks.uncontended,\n\
         \x20            11 locks.contended2p, 11 array, 11 shm.1MiB, 5 shm.256MiB,\n\
         \x20            11 sync.pingpong, 7 queue.*, 7 pool.create, 7 pool.map, 11 pool.apply_async,\n\
         \x20            7 pool.imap_unordered, 9 pool.cpu, 7 executor, 9 manager (3 with --quick)\n\
         --quick      tiny iteration counts (a smoke test, not a measurement)\n\
         --limits-out write raw limits to FILE under their exact names (spread to FILE.err);\n\
         \x20            otherwise they go to stdout as `limit:<name>`\n\
         \ngroups:\n",
    );
    for (g, what) in GROUPS {
        s += &format!("  {g:<16} {what}\n");
    }
    s += "families:\n";
    for (f, what) in FAMILIES {
        s += &format!("  {f:<16} {what}\n");
    }
    s
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        groups: Vec::new(),
        mp: true,
        limits: true,
        reps: None,
        quick: false,
        limits_out: None,
    };
    let mut families = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--only" => {
                for tok in value("--only")?.split(',').filter(|t| !t.is_empty()) {
                    if FAMILIES.iter().any(|(f, _)| *f == tok) {
                        families.push(tok.to_string());
                    } else if GROUPS
                        .iter()
                        .any(|(g, _)| *g == tok || g.starts_with(&format!("{tok}.")))
                    {
                        a.groups.push(tok.to_string());
                    } else {
                        return Err(format!("unknown group or family {tok:?}\n\n{}", usage()));
                    }
                }
            }
            "--reps" => {
                let v = value("--reps")?;
                let n: usize = v.parse().map_err(|_| format!("bad --reps {v:?}"))?;
                a.reps = Some(n.max(1));
            }
            "--quick" => a.quick = true,
            "--limits-out" => a.limits_out = Some(PathBuf::from(value("--limits-out")?)),
            "--list" => {
                for (g, _) in GROUPS {
                    println!("{g}");
                }
                return Ok(None);
            }
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(None);
            }
            other => return Err(format!("unknown argument {other:?}\n\n{}", usage())),
        }
    }
    if !families.is_empty() {
        a.mp = families.iter().any(|f| f == "mp");
        a.limits = families.iter().any(|f| f == "limits");
    }
    Ok(Some(a))
}

impl Args {
    fn selected(&self, group: &str) -> bool {
        self.groups.is_empty()
            || self
                .groups
                .iter()
                .any(|o| group == o || group.starts_with(&format!("{o}.")))
    }

    fn rounds(&self, default: usize) -> usize {
        self.reps
            .unwrap_or(if self.quick { 3 } else { default })
            .max(1)
    }

    /// An iteration count: `full`, or `quick` with `--quick`.
    fn n(&self, full: usize, quick: usize) -> usize {
        if self.quick { quick } else { full }
    }
}

fn main() {
    // The exec floor of the spawn method (`proc.posix_spawn_self_wait`): leave at once.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == limits::EXIT_AT_ONCE)
    {
        std::process::exit(0);
    }
    // Children started with the spawn method re-execute this binary; they are dispatched
    // here (or by the pre-main hook) and never reach the benchmarks.
    multiproc_core::init();
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            eprintln!("multiproc-benches: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&args) {
        eprintln!("multiproc-benches: error: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Res<()> {
    let mut out = match &a.limits_out {
        Some(p) => Out::with_limits_file(p)?,
        None => Out::default(),
    };
    meta("suite", "multiproc-benches");
    meta(
        "cpus",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    meta("quick", a.quick);
    if let Some(r) = a.reps {
        meta("reps", r);
    }
    meta(
        "families",
        match (a.mp, a.limits) {
            (true, true) => "mp,limits",
            (true, false) => "mp",
            (false, true) => "limits",
            (false, false) => "none",
        },
    );
    let t_all = Instant::now();
    if a.mp {
        // One start+join per method before anything is measured: starts the fork server
        // (before the 256 MiB ballast exists, as CPython's does in mp_bench.py).
        mp::warm_up()?;
    }
    for (group, _) in GROUPS {
        if !a.selected(group) {
            continue;
        }
        let t0 = Instant::now();
        match *group {
            "proc" => proc_group(&mut out, a, "")?,
            "proc.rss256MiB" => {
                let ballast = limits::Ballast::new(BALLAST);
                meta("rss_kib_with_ballast", limits::rss_kib());
                proc_group(&mut out, a, ".rss256MiB")?;
                drop(ballast);
            }
            "pipe.roundtrip" => roundtrip_group(&mut out, a)?,
            "pipe.throughput" => throughput_group(&mut out, a)?,
            "listener.roundtrip" => listener_group(&mut out, a)?,
            "locks.uncontended" => uncontended_group(&mut out, a)?,
            "locks.contended2p" => contended_group(&mut out, a)?,
            "array" => array_group(&mut out, a)?,
            "shm.1MiB" => shm_ops_group(&mut out, a)?,
            "shm.256MiB" => shm_big_group(&mut out, a)?,
            "sync.pingpong" => sync_group(&mut out, a)?,
            "queue.throughput" => queue_throughput_group(&mut out, a)?,
            "queue.roundtrip" => queue_roundtrip_group(&mut out, a)?,
            "queue.item_1MiB" => queue_big_group(&mut out, a)?,
            "pool.create" => pool_create_group(&mut out, a)?,
            "pool.map" => pool_map_group(&mut out, a)?,
            "pool.apply_async" => pool_apply_group(&mut out, a)?,
            "pool.imap_unordered" => pool_imap_group(&mut out, a)?,
            "pool.cpu" => pool_cpu_group(&mut out, a)?,
            "executor" => executor_group(&mut out, a)?,
            "manager" => manager_group(&mut out, a)?,
            _ => unreachable!("group {group} has no runner"),
        }
        eprintln!(
            "#meta\tgroup_seconds\t{group}\t{:.1}",
            t0.elapsed().as_secs_f64()
        );
    }
    meta(
        "total_seconds",
        format!("{:.1}", t_all.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// Start+join per start method, alternating with the raw fork and posix_spawn limits.
fn proc_group(out: &mut Out, a: &Args, suffix: &'static str) -> Res<()> {
    let big = !suffix.is_empty();
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        let nf = if big { a.n(20, 2) } else { a.n(500, 10) };
        let ns = a.n(if big { 50 } else { 100 }, 5);
        benches.push(Box::new(limits::ForkExitWait { n: nf, suffix }));
        benches.push(Box::new(limits::PosixSpawnTrue { n: ns, suffix }));
        benches.push(Box::new(limits::PosixSpawnSelf { n: ns, suffix }));
        if !big {
            benches.push(Box::new(limits::ForkserverRaw::new(a.n(200, 10))));
        }
    }
    if a.mp {
        let nf = if big { a.n(20, 2) } else { a.n(200, 10) };
        benches.push(mp::start_join(mp::Method::Fork, nf, suffix));
        benches.push(mp::start_join(mp::Method::Forkserver, a.n(200, 10), suffix));
        benches.push(mp::start_join(mp::Method::Spawn, a.n(100, 5), suffix));
    }
    run_rotated(out, &mut benches, a.rounds(if big { 7 } else { 15 }))
}

/// 64 B round trips: multiproc duplex and simplex pipes, raw pipe and socketpair ping-pong.
fn roundtrip_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        let it = a.n(5000, 200);
        benches.push(Box::new(limits::PingPong::new(limits::Chan::Pipe, 64, it)));
        benches.push(Box::new(limits::PingPong::new(
            limits::Chan::Socketpair,
            64,
            it,
        )));
    }
    if a.mp {
        let it = a.n(3000, 200);
        benches.push(mp::roundtrip(mp::Channel::Duplex, 64, it));
        benches.push(mp::roundtrip(mp::Channel::Simplex, 64, it));
    }
    run_rotated(out, &mut benches, a.rounds(15))
}

/// 64 B round trips over `Listener`/`Client` connections (Unix socket, TCP loopback), raw
/// socketpair and TCP ping-pong.
fn listener_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        let it = a.n(5000, 200);
        for chan in [limits::Chan::Socketpair, limits::Chan::Tcp] {
            benches.push(Box::new(limits::PingPong::new(chan, 64, it)));
        }
    }
    if a.mp {
        let it = a.n(3000, 200);
        for channel in [mp::Channel::ListenerUnix, mp::Channel::ListenerTcp] {
            benches.push(mp::roundtrip(channel, 64, it));
        }
    }
    run_rotated(out, &mut benches, a.rounds(15))
}

/// Streams of 1 KiB, 64 KiB and 16 MiB messages from a child to the parent.
fn throughput_group(out: &mut Out, a: &Args) -> Res<()> {
    // (size, label, raw bytes per repetition as in stream.c, multiproc messages as in mp_bench.py)
    let sizes: [(usize, &'static str, usize, usize); 3] = [
        (KIB, "1KiB", 64 * MIB, 20000),
        (64 * KIB, "64KiB", 256 * MIB, 2000),
        (16 * MIB, "16MiB", 256 * MIB, 16),
    ];
    for (size, label, raw_total, count) in sizes {
        let mut benches: Vec<Box<dyn Bench>> = Vec::new();
        if a.limits {
            let total = if a.quick { raw_total / 16 } else { raw_total };
            for chan in [limits::Chan::Pipe, limits::Chan::Socketpair] {
                benches.push(Box::new(limits::Throughput::new(chan, size, total, label)));
            }
        }
        if a.mp {
            let count = if a.quick { (count / 16).max(1) } else { count };
            benches.push(mp::throughput(true, size, count, label));
            benches.push(mp::throughput(false, size, count, label));
        }
        run_rotated(out, &mut benches, a.rounds(7))?;
    }
    Ok(())
}

/// Uncontended lock figures (iteration counts of mp_bench.py) with locks.c's uncontended raw
/// locks (2,000,000 lock+increment+unlock per repetition) and its atomic fetch-add.
fn uncontended_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::AtomicFetchAdd::new(
            a.n(5_000_000, 50_000),
        )));
        for k in limits::LockKind::ALL {
            benches.push(Box::new(limits::LockUncontended::new(
                k,
                a.n(2_000_000, 20_000),
            )));
        }
    }
    if a.mp {
        let n = a.n(200_000, 2_000);
        benches.push(mp::uncontended(mp::Uncontended::Lock, n));
        benches.push(mp::uncontended(mp::Uncontended::RLock, n));
        benches.push(mp::uncontended(
            mp::Uncontended::ValueIncrement,
            a.n(100_000, 1_000),
        ));
    }
    run_rotated(out, &mut benches, a.rounds(15))
}

/// Two processes incrementing one counter under one lock, 100,000 times each.
fn contended_group(out: &mut Out, a: &Args) -> Res<()> {
    let n = a.n(100_000, 1_000);
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        for k in limits::LockKind::ALL {
            benches.push(Box::new(limits::LockContended::new(k, n)));
        }
    }
    if a.mp {
        benches.push(mp::contended(n));
    }
    run_rotated(out, &mut benches, a.rounds(11))
}

/// A child filling 10^6 doubles; raw: a forked child copying 8 MB into a fresh or a reused
/// shm segment.
fn array_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::ShmChildFill::new(true)));
        benches.push(Box::new(limits::ShmChildFill::new(false)));
    }
    if a.mp {
        let n = a.n(1_000_000, 10_000);
        for mode in [
            mp::Fill::SliceFromList,
            mp::Fill::ElementwiseRaw,
            mp::Fill::MemoryviewBulk,
        ] {
            benches.push(mp::array_fill(mode, n));
        }
    }
    run_rotated(out, &mut benches, a.rounds(11))
}

/// Create, attach, close+unlink of 1 MiB segments (raw: 1,000 per repetition as mem.c;
/// multiproc: 200 as mp_bench.py).
fn shm_ops_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::ShmOps::new(a.n(1000, 20))));
    }
    if a.mp {
        benches.push(mp::shm_ops(a.n(200, 10)));
    }
    run_rotated(out, &mut benches, a.rounds(11))
}

/// A child writing 256 MiB into a fresh segment, the parent reading it (16 MiB with --quick).
fn shm_big_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.quick {
        meta("shm_big_bytes_quick", 16 * MIB);
    }
    if a.limits {
        benches.push(Box::new(limits::ShmChildWriteParentRead::new(
            false,
            a.n(limits::BIG, 16 * MIB),
        )));
        benches.push(Box::new(limits::ShmChildWriteParentRead::new(
            true,
            a.n(limits::BIG, 16 * MIB),
        )));
    }
    if a.mp {
        benches.push(mp::shm_big(a.n(limits::BIG, 16 * MIB)));
    }
    run_rotated(out, &mut benches, a.rounds(5))
}

/// Event, Barrier(2) and Condition ping-pong (2,000 round trips per repetition, as
/// mp_bench.py); raw shared-futex and process-shared-semaphore ping-pong (5,000, as
/// pingpong.c).
fn sync_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        let it = a.n(5000, 200);
        benches.push(Box::new(limits::SyncPingPong::new(limits::Wake::Futex, it)));
        benches.push(Box::new(limits::SyncPingPong::new(limits::Wake::Sem, it)));
    }
    if a.mp {
        let it = a.n(2000, 100);
        for what in [
            mp::PingPong::Event,
            mp::PingPong::Barrier,
            mp::PingPong::Condition,
        ] {
            benches.push(mp::ping_pong(what, it));
        }
    }
    run_rotated(out, &mut benches, a.rounds(11))
}

/// Queue throughput: 100,000 ints from 1 or 4 producers (mp_bench.py's `b_queue`), with the
/// raw SPSC ring (2,000,000 u64 per repetition, stream.c).
fn queue_throughput_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::SpscRing::new(
            a.n(2_000_000, 20_000) as u64
        )));
    }
    if a.mp {
        let n = a.n(100_000, 2_000);
        for kind in [mp::QueueKind::Queue, mp::QueueKind::Simple] {
            for producers in [1, 4] {
                benches.push(mp::queue_throughput(kind, producers, n));
            }
        }
    }
    run_rotated(out, &mut benches, a.rounds(7))
}

/// Int round trips through two queues (1,000 per repetition, mp_bench.py), with the raw
/// shared-futex ping-pong (5,000, pingpong.c).
fn queue_roundtrip_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::SyncPingPong::new(
            limits::Wake::Futex,
            a.n(5000, 200),
        )));
    }
    if a.mp {
        let it = a.n(1000, 100);
        for kind in [mp::QueueKind::Queue, mp::QueueKind::Simple] {
            benches.push(mp::ping_pong(mp::PingPong::Queue(kind), it));
        }
    }
    run_rotated(out, &mut benches, a.rounds(11))
}

/// 1 MiB items through a `Queue` (100 per repetition), with the raw 256 MiB memcpy (mem.c).
fn queue_big_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::MemcpyWarm::new(a.n(256 * MIB, 16 * MIB))));
    }
    if a.mp {
        benches.push(mp::queue_big(MIB, a.n(100, 8)));
    }
    run_rotated(out, &mut benches, a.rounds(7))
}

/// `Pool::new(2)` + `close` + `join` (10 pools per repetition; mp_bench.py times one), with
/// raw fork+_exit+waitpid (a pool starts and reaps two processes: `benches/pairs.tsv` doubles it).
fn pool_create_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::ForkExitWait {
            n: a.n(200, 10),
            suffix: "",
        }));
    }
    if a.mp {
        benches.push(pool::create_close_join(a.n(10, 2)));
    }
    run_rotated(out, &mut benches, a.rounds(7))
}

/// Trivial maps on one 2-worker pool (mp_bench.py's counts), with the raw rate of 12-byte
/// pipe messages read one by one (stream.c, 200,000 per repetition), the bound of one-task
/// chunks.
fn pool_map_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::SmallMsgRate::new(a.n(200_000, 5_000))));
    }
    if a.mp {
        let p = pool::new_pool()?;
        let kind = pool::MapKind::Map;
        benches.push(pool::map_trivial(
            &p,
            kind,
            a.n(100_000, 2_000) as u64,
            None,
        ));
        benches.push(pool::map_trivial(
            &p,
            kind,
            a.n(10_000, 500) as u64,
            Some(1),
        ));
    }
    run_rotated(out, &mut benches, a.rounds(7))
}

/// `apply_async(noop).get()` (500 per repetition, mp_bench.py) with the raw pipe ping-pong
/// (5,000, pingpong.c), its bound.
fn pool_apply_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::PingPong::new(
            limits::Chan::Pipe,
            64,
            a.n(5000, 200),
        )));
    }
    if a.mp {
        let p = pool::new_pool()?;
        benches.push(pool::apply_roundtrip(&p, a.n(500, 50)));
    }
    run_rotated(out, &mut benches, a.rounds(11))
}

/// `imap_unordered` of trivial tasks on one 2-worker pool (mp_bench.py's counts), with the
/// raw rate of 12-byte pipe messages read one by one.
fn pool_imap_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::SmallMsgRate::new(a.n(200_000, 5_000))));
    }
    if a.mp {
        let p = pool::new_pool()?;
        let kind = pool::MapKind::ImapUnordered;
        benches.push(pool::map_trivial(
            &p,
            kind,
            a.n(10_000, 500) as u64,
            Some(1),
        ));
        benches.push(pool::map_trivial(
            &p,
            kind,
            a.n(100_000, 2_000) as u64,
            Some(100),
        ));
    }
    run_rotated(out, &mut benches, a.rounds(7))
}

/// 200 CPU tasks serially and through `map` on 2 workers, with the speed-up two forked
/// processes get on the same work right now (proc.c's `parallel_speedup`).
fn pool_cpu_group(out: &mut Out, a: &Args) -> Res<()> {
    let items = if a.quick { 20 } else { pool::CPU_ITEMS };
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::ParallelSpeedup::new(items)));
    }
    if a.mp {
        let p = pool::new_pool()?;
        benches.push(pool::cpu_map(&p, items));
    }
    run_rotated(out, &mut benches, a.rounds(9))
}

/// `ProcessPoolExecutor` of 2 workers (mp_bench.py's `b_executor` counts), with the raw pipe
/// ping-pong (the bound of `submit(..).result()`) and the raw small-message rate (of one-task
/// chunks).
fn executor_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::PingPong::new(
            limits::Chan::Pipe,
            64,
            a.n(5000, 200),
        )));
        benches.push(Box::new(limits::SmallMsgRate::new(a.n(200_000, 5_000))));
    }
    if a.mp {
        let ex = pool::new_executor()?;
        benches.push(pool::submit_roundtrip(&ex, a.n(500, 50)));
        benches.push(pool::executor_map(&ex, a.n(10_000, 500) as u64, 1));
        benches.push(pool::executor_map(&ex, a.n(100_000, 2_000) as u64, 1000));
    }
    run_rotated(out, &mut benches, a.rounds(7))
}

/// A fork `Manager` (mp_bench.py's `b_manager` figures with its counts: 2,000 ops per
/// repetition, timed by the child), 8 children sharing one dict proxy, and start+shutdown;
/// with the raw socketpair ping-pong (a proxy call is one request and one reply over a Unix
/// stream socket) and raw fork+_exit+waitpid (a manager's start forks its server).
fn manager_group(out: &mut Out, a: &Args) -> Res<()> {
    let mut benches: Vec<Box<dyn Bench>> = Vec::new();
    if a.limits {
        benches.push(Box::new(limits::PingPong::new(
            limits::Chan::Socketpair,
            64,
            a.n(5000, 200),
        )));
        benches.push(Box::new(limits::ForkExitWait {
            n: a.n(200, 10),
            suffix: "",
        }));
    }
    if a.mp {
        let m = manager::new_manager()?;
        let n = a.n(2000, 100);
        for what in [
            manager::FromChild::Dict,
            manager::FromChild::Queue,
            manager::FromChild::List,
        ] {
            benches.push(manager::from_child(&m, what, n));
        }
        benches.push(manager::dict_clients(&m, manager::CLIENTS, n));
        benches.push(manager::start_shutdown(a.n(5, 2)));
    }
    run_rotated(out, &mut benches, a.rounds(9))
}
