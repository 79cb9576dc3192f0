//! The shared harness of multiproc's process tests (`tests/processes.rs` of each crate, built
//! with `harness = false`).
//!
//! [`run`] starts libtest-mimic with one test thread, so every trial runs on the main thread of
//! a single-threaded process (the fork start method is allowed there); [`trials`] turns each
//! test into one trial per start method. The helpers start children with a deadline on every
//! wait, and [`check!`] turns a failed condition into a test failure with a message.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

pub use libtest_mimic::{Failed, Trial};
use multiproc_core::{Process, StartMethod, get_context, reduction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

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

/// One end of a close-on-exec pipe that can be a process argument (its fd travels in the fd
/// table): children report lines through it, with a deadline on every read.
#[derive(Debug, Serialize, Deserialize)]
pub struct End(#[serde(with = "reduction::fd")] pub OwnedFd);

impl End {
    /// A pipe: `(read end, write end)`.
    pub fn pair() -> (End, End) {
        let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        (End(r), End(w))
    }

    /// Writes `msg` and a newline.
    pub fn send(&self, msg: &str) {
        let mut f = std::fs::File::from(self.0.try_clone().unwrap());
        f.write_all(format!("{msg}\n").as_bytes()).unwrap();
    }

    /// Waits (until the [`LONG`] deadline) for the end to be readable.
    fn wait_readable(&self, deadline: Instant) -> Result<(), Failed> {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::event::Timespec::try_from(left).unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &self.0,
            rustix::event::PollFlags::IN,
        )];
        if rustix::event::poll(&mut fds, Some(&ts)).unwrap_or(1) == 0 {
            return Err("timed out reading from a child".into());
        }
        Ok(())
    }

    /// Reads one line (without its newline), a byte at a time so that nothing after it is
    /// consumed, with the [`LONG`] deadline; end-of-file first is an error.
    pub fn line(&self) -> Result<String, Failed> {
        let deadline = Instant::now() + LONG;
        let mut f = std::fs::File::from(self.0.try_clone()?);
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\n") {
            self.wait_readable(deadline)?;
            match f.read(&mut byte)? {
                0 => return Err(format!("end of file after {buf:?}").into()),
                _ => buf.push(byte[0]),
            }
        }
        Ok(String::from_utf8(buf)?.trim_end().to_string())
    }

    /// Reads until end-of-file or `lines` lines, with the [`LONG`] deadline.
    pub fn lines(self, lines: usize) -> Result<Vec<String>, Failed> {
        let deadline = Instant::now() + LONG;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while buf.iter().filter(|&&b| b == b'\n').count() < lines {
            self.wait_readable(deadline)?;
            match rustix::io::read(&self.0, &mut chunk)? {
                0 => break,
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
        Ok(String::from_utf8(buf)?
            .lines()
            .map(str::to_string)
            .collect())
    }
}
