//! Ten processes count a shared number down from 10 under an `RLock`, each printing the value
//! it left (seed `001`, "进程锁").
//!
//! ```python
//! from multiprocessing import Process, Array, RLock
//! import time
//!
//! def func(i, lis, lc):
//!     lc.acquire()
//!     lis[0] = lis[0] - 1
//!     time.sleep(1)
//!     print('say hi', lis[0])
//!     lc.release()
//!
//! if __name__ == "__main__":
//!     array = Array('i', 1)
//!     array[0] = 10
//!     lock = RLock()
//!     for i in range(10):
//!         p = Process(target=func, args=(i, array, lock))
//!         p.start()
//! ```
//!
//! The sleep is shortened to 20 ms. Whoever holds the lock decrements and prints before the
//! next one may start, so the output counts down in order.
// expect-lines: 10
// expect: say hi 9
// expect: say hi 0

use std::time::Duration;

use multiproc::{Array, Process, RLock};

fn func((_i, lis, lc): (u32, Array<i32>, RLock)) {
    let _guard = lc.acquire().expect("no process died holding the lock");
    lis.set(0, lis.get(0) - 1);
    std::thread::sleep(Duration::from_millis(20));
    println!("say hi {}", lis.get(0));
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let array = Array::<i32>::zeroed(1)?;
    array.set(0, 10);
    let lock = RLock::new()?;
    let mut children = Vec::new();
    for i in 0..10 {
        let mut p = Process::new(func, (i, array.clone(), lock.clone()));
        p.start()?;
        children.push(p);
    }
    for p in &children {
        assert_eq!(p.join()?, 0);
    }
    assert_eq!(array.get(0), 0);
    Ok(())
}
