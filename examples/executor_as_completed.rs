//! Ten squares on three workers, printed as they complete (seed `002`, "ProcessPoolExecutor").
//!
//! ```python
//! from concurrent.futures import ProcessPoolExecutor, as_completed
//! import time
//!
//! def square(n):
//!     time.sleep(1)
//!     return n * n
//!
//! if __name__ == '__main__':
//!     with ProcessPoolExecutor(max_workers=3) as executor:
//!         tasks = [executor.submit(square, num) for num in range(10)]
//!         for future in as_completed(tasks):
//!             print(future.result())
//! # 0 1 4 9 16 25 36 49 64 81
//! ```
//!
//! The sleep is shortened to 100 ms. Three calls run at a time, so the squares come out roughly
//! in order, but not necessarily: `as_completed` yields each future as soon as it finishes.
//! The end of `main` drops the executor, which waits for its workers as Python's `with` block
//! does. Run it with `cargo xtask demo executor_as_completed`.
// expect-lines: 11
// expect: 81
// expect: all ten squares

use std::time::Duration;

use multiproc::{ProcessPoolExecutor, as_completed};

fn square(n: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(100));
    n * n
}

fn main() -> Result<(), multiproc::PoolError> {
    multiproc::init();
    let executor = ProcessPoolExecutor::new(3)?;
    let tasks = (0..10)
        .map(|num| executor.submit(square, num))
        .collect::<Result<Vec<_>, _>>()?;
    let mut squares = Vec::new();
    for future in as_completed(tasks, None) {
        let square = future?.result()?;
        println!("{square}");
        squares.push(square);
    }
    squares.sort_unstable();
    assert_eq!(squares, (0..10).map(|n| n * n).collect::<Vec<u64>>());
    println!("all ten squares: {squares:?}");
    Ok(())
}
