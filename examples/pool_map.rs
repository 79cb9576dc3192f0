//! `Pool::map`: four workers square the numbers 1 to 5 and the results come back in order
//! (seed `004`, "进程池（Pool）").
//!
//! ```python
//! from multiprocessing import Pool
//!
//! def square(x):
//!     return x * x
//!
//! if __name__ == "__main__":
//!     with Pool(4) as p:
//!         results = p.map(square, [1, 2, 3, 4, 5])
//!     print(results)
//! ```
//!
//! As with Python's `with Pool(4) as p:`, dropping the pool at the end of its block
//! terminates the workers.
// expect: [1, 4, 9, 16, 25]
// expect-lines: 1

use multiproc::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let results = {
        let p = Pool::new(4)?;
        p.map(square, [1, 2, 3, 4, 5])?
    };
    println!("{results:?}");
    Ok(())
}
