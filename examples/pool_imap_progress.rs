//! A long `imap` with a progress bar: 2,000 tasks on four workers, their results taken in
//! order as they come, while a bar on stderr shows how many are done, the rate and the time
//! left (Python programs wrap the iterator in `tqdm`; here the bar is an option of the map:
//! `MapOptions::progress_bar`, under the `progress` feature of `multiproc`).
//!
//! No seed has this snippet; it is the usual Python idiom:
//!
//! ```python
//! from multiprocessing import Pool
//! from tqdm import tqdm
//! import time
//!
//! def work(x):
//!     time.sleep(0.002)
//!     return x * x
//!
//! if __name__ == "__main__":
//!     with Pool(4) as pool:
//!         total = 0
//!         for r in tqdm(pool.imap(work, range(2000)), total=2000):
//!             total += r
//!     print("sum of squares of 0..2000:", total)
//! ```
//!
//! `imap` reads its input lazily (a few tasks per worker ahead of the results taken), so the
//! input may be endless; the bar knows the total when the input's length is known. The bar is
//! drawn only when stderr is a terminal.
// expect: sum of squares of 0..2000: 2664667000
// expect: tasks done: 2000
// expect-lines: 2

use std::time::Duration;

use multiproc::{MapOptions, Pool};

fn work(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    x * x
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let pool = Pool::new(4)?;
    let mut total = 0;
    let mut done = 0;
    for r in pool.imap_with(work, 0..2000, MapOptions::new().progress_bar()) {
        total += r?;
        done += 1;
    }
    println!("sum of squares of 0..2000: {total}");
    println!("tasks done: {done}");
    Ok(())
}
