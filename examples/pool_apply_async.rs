//! A pool of two workers runs five tasks submitted with `apply_async`; each sleeps a second
//! and prints its worker's pid, so two pids take turns (seed `002`, "Pool进程池").
//!
//! ```python
//! from multiprocessing import Pool
//! import multiprocessing as mp
//! import time
//!
//! def func(message):
//!     time.sleep(1)
//!     print('PID-{}: '.format(mp.current_process().pid), message)
//!
//! if __name__ == '__main__':
//!     p = Pool(2)
//!
//!     for i in range(5):
//!         p.apply_async(func, args=(i,))
//!
//!     p.close() #调用close()之后不能添加新的Process
//!     p.join()  #阻塞等待
//! # PID-4368:  0
//! # PID-15972:  1
//! # PID-4368:  2
//! # PID-15972:  3
//! # PID-4368:  4
//! ```
//!
//! The five tasks take about three seconds: two at a time on the two workers. Which worker
//! takes which task is up to the scheduler (a free worker takes the next one), so the pids
//! need not alternate strictly, but only two appear. The task returns its pid as well, so the
//! program can check that; Python's snippet drops the results, which `close` + `join` still
//! wait for.
// expect: PID-
// expect: :  4
// expect-lines: 5

use std::collections::BTreeSet;
use std::time::Duration;

use multiproc::Pool;

fn func(message: u32) -> u32 {
    std::thread::sleep(Duration::from_secs(1));
    let pid = multiproc::current_process().pid;
    println!("PID-{pid}:  {message}");
    pid
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let p = Pool::new(2)?;
    let mut results = Vec::new();
    for i in 0..5 {
        results.push(p.apply_async(func, i)?);
    }
    p.close(); // no new tasks after close()
    p.join()?; // waits for the five tasks
    let pids = results
        .into_iter()
        .map(|r| r.get())
        .collect::<Result<BTreeSet<u32>, _>>()?;
    assert!(pids.len() <= 2, "five tasks ran on {} pids", pids.len());
    Ok(())
}
