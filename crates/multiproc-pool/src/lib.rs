//! Process pools for multiproc: [`Pool`] (Python's `multiprocessing.Pool`) and
//! `ProcessPoolExecutor` (Python's `concurrent.futures.ProcessPoolExecutor`), on one engine.
//!
//! Tasks are `fn(A) -> R` (functions or non-capturing closures) with serde arguments and
//! results. They travel as chunks through a shared task ring and come back through a shared
//! result ring; each worker notes in shared memory which chunk it holds, so a worker that dies
//! fails exactly the tasks it held ([`PoolError::WorkerLost`]) and is replaced, where Python's
//! pool hangs forever. Workers ignore SIGINT and die with their parent; a pool can limit each
//! task's run time and show progress.
//!
//! ```
//! use multiproc_pool::{MapOptions, Pool, PoolError};
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//! fn fails(x: u64) -> u64 {
//!     if x == 3 { panic!("three is bad") } else { x }
//! }
//!
//! let pool = Pool::new(2)?;
//! assert_eq!(pool.map(square, 1..=5)?, [1, 4, 9, 16, 25]);
//! let firsts: Vec<u64> = pool.imap(square, 0..).take(3).collect::<Result<_, _>>()?;
//! assert_eq!(firsts, [0, 1, 4]);
//! match pool.map_with(fails, 0..10, MapOptions::new().chunksize(1)) {
//!     Err(PoolError::Panicked(p)) => assert_eq!(p.message(), "three is bad"),
//!     other => panic!("{other:?}"),
//! }
//! # Ok::<(), PoolError>(())
//! ```
//!
//! The design is in `research/pool-engine.md` and `docs/decisions.md` ("Pools (issue 8)").

mod engine;
mod error;
mod executor;
mod pool;
mod progress;

pub use crate::error::PoolError;
pub use crate::executor::{
    AnyFuture, AsCompleted, DoneAndNotDone, Future, MapResults, ProcessPoolExecutor,
    ProcessPoolExecutorBuilder, WaitMode, as_completed, wait,
};
pub use crate::pool::{AsyncResult, Imap, Pool, PoolBuilder, Task};
pub use crate::progress::{MapOptions, Progress};
