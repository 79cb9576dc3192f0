//! The shared harness of multiproc's process tests (`tests/processes.rs` of each crate, built
//! with `harness = false`).
//!
//! [`run`] starts libtest-mimic with one test thread, so every trial runs on the main thread of
//! a single-threaded process (the fork start method is allowed there); [`trials`] turns each
//! test into one trial per start method. The helpers start children with a deadline on every
//! wait, and [`check!`] turns a failed condition into a test failure with a message.

use std::time::Duration;

pub use libtest_mimic::{Failed, Trial};
use multiproc_core::{Process, StartMethod, get_context};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every start method, in the order the trials run.
pub const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::Forkserver,
];

/// The generous deadline of every wait in a test (CI machines are small and shared).
pub const LONG: Duration = Duration::from_secs(60);

/// A test that runs under one start method.
pub type TestFn = fn(StartMethod) -> Result<(), Failed>;

/// Fails the test with a formatted message unless the condition holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*).into());
        }
    };
}

/// One trial `name::method` per test and start method.
pub fn trials(tests: &[(&str, TestFn)]) -> Vec<Trial> {
    let mut trials = Vec::new();
    for &(name, test) in tests {
        for method in METHODS {
            trials.push(Trial::test(format!("{name}::{method}"), move || {
                test(method)
            }));
        }
    }
    trials
}

/// Dispatches a spawned child (first), then runs the trials on the main thread and exits.
///
/// The exit handler's wait for children is bounded by [`LONG`] (then they are killed), so a
/// child left blocked by a failed check is reported, never a hung run.
pub fn run(trials: Vec<Trial>) -> ! {
    multiproc_core::init();
    multiproc_core::set_exit_join_timeout(Some(LONG));
    let mut args = libtest_mimic::Arguments::from_args();
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials).exit()
}

/// Starts `f(a)` with the start method `m`.
pub fn start<A>(m: StartMethod, f: fn(A), a: A) -> Result<Process, Failed>
where
    A: Serialize + DeserializeOwned + Send + 'static,
{
    let mut p = get_context(m).process(f, a);
    p.start()?;
    Ok(p)
}

/// Starts `f(a)` as a daemon: should a failed check leave it running, the exit handler stops it
/// instead of waiting for it.
pub fn start_daemon<A>(m: StartMethod, f: fn(A), a: A) -> Result<Process, Failed>
where
    A: Serialize + DeserializeOwned + Send + 'static,
{
    let mut p = get_context(m).process(f, a);
    p.set_daemon(true)?;
    p.start()?;
    Ok(p)
}

/// Joins with the [`LONG`] deadline; kills the child and fails if it runs past it.
pub fn join(p: &Process) -> Result<i32, Failed> {
    match p.join_timeout(LONG)? {
        Some(code) => Ok(code),
        None => {
            p.kill()?;
            Err(format!("{} did not exit within {LONG:?}", p.name()).into())
        }
    }
}

/// Joins every child; fails unless each exited with 0.
pub fn join_all(ps: &[Process]) -> Result<(), Failed> {
    for p in ps {
        let code = join(p)?;
        if code != 0 {
            return Err(format!("{} exited with {code}", p.name()).into());
        }
    }
    Ok(())
}
