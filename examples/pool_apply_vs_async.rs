//! `apply` runs one task and waits for it (serial); `apply_async` submits and returns at once
//! (parallel): five one-second tasks take about five seconds one way and one second the other
//! (seed `001`, "进程池Pool类": "apply() 同步执行（串行）, apply_async() 异步执行（并行）").
//!
//! The seed lists the methods without code; this is the program its list describes:
//!
//! ```python
//! from multiprocessing import Pool
//! import os, time
//!
//! def task(i):
//!     time.sleep(1)
//!     return os.getpid()
//!
//! if __name__ == "__main__":
//!     with Pool(5) as pool:
//!         t0 = time.time()
//!         for i in range(5):
//!             pool.apply(task, (i,))                  # waits for each task: serial
//!         print("apply (serial): %.1f s" % (time.time() - t0))
//!         t0 = time.time()
//!         results = [pool.apply_async(task, (i,)) for i in range(5)]
//!         pids = [r.get() for r in results]           # all five ran at once: parallel
//!         print("apply_async (parallel): %.1f s" % (time.time() - t0))
//! ```
// expect: apply (serial): 5.
// expect: apply_async (parallel): 1.
// expect-lines: 2

use std::time::{Duration, Instant};

use multiproc::Pool;

fn task(_i: u32) -> u32 {
    std::thread::sleep(Duration::from_secs(1));
    multiproc::current_process().pid
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let pool = Pool::new(5)?;

    let t0 = Instant::now();
    for i in 0..5 {
        pool.apply(task, i)?; // waits for each task: serial
    }
    let serial = t0.elapsed();
    println!("apply (serial): {:.1} s", serial.as_secs_f64());

    let t0 = Instant::now();
    let results = (0..5)
        .map(|i| pool.apply_async(task, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut pids = Vec::new();
    for r in results {
        pids.push(r.get()?); // all five ran at once: parallel
    }
    let parallel = t0.elapsed();
    println!("apply_async (parallel): {:.1} s", parallel.as_secs_f64());

    assert!(parallel < serial / 2, "apply_async did not run in parallel");
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 5, "five tasks at once need five workers");
    pool.close();
    pool.join()?;
    Ok(())
}
