//! `terminate` stops a pool at once: the workers are killed in the middle of their tasks and
//! the pending results fail, where `close` would wait for them (seed `001`, "进程池Pool类":
//! "terminate() 立刻关闭进程池", "join() 主进程等待所有子进程执行完毕。必须在close或terminate()之后").
//!
//! The seed lists the method without code; this is the program its list describes:
//!
//! ```python
//! from multiprocessing import Pool
//! import time
//!
//! def work(i):
//!     time.sleep(10)
//!     return i
//!
//! if __name__ == "__main__":
//!     pool = Pool(2)
//!     t0 = time.time()
//!     results = [pool.apply_async(work, (i,)) for i in range(4)]
//!     time.sleep(0.5)
//!     pool.terminate()      # kills the workers now: the ten-second tasks never finish
//!     pool.join()           # allowed after terminate()
//!     print("terminated after %.1f s" % (time.time() - t0))
//!     print([r.ready() for r in results])    # [False, False, False, False]: never ready
//! ```
//!
//! In Python the pending results never become ready (a `get()` would wait forever); here they
//! are ready at once with `PoolError::Terminated`.
// expect: terminated after 0.
// expect: task 3: the pool was terminated
// expect-lines: 5

use std::time::{Duration, Instant};

use multiproc::{Pool, PoolError};

fn work(i: u32) -> u32 {
    std::thread::sleep(Duration::from_secs(10));
    i
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let pool = Pool::new(2)?;
    let t0 = Instant::now();
    let results = (0..4)
        .map(|i| pool.apply_async(work, i))
        .collect::<Result<Vec<_>, _>>()?;
    std::thread::sleep(Duration::from_millis(500));
    pool.terminate(); // kills the workers now: the ten-second tasks never finish
    pool.join()?; // allowed after terminate()
    println!("terminated after {:.1} s", t0.elapsed().as_secs_f64());
    for (i, r) in results.into_iter().enumerate() {
        match r.get() {
            Err(e @ PoolError::Terminated) => println!("task {i}: {e}"),
            other => panic!("task {i}: {other:?}"),
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    Ok(())
}
