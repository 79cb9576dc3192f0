//! The machine's raw limits for the operations multiproc performs, in Rust over libc and rustix.
//!
//! Each bench replicates the method of the C file in the reference harness (`bench/limits/`)
//! whose figure name it prints: `proc.c` (fork/`_exit`/waitpid, posix_spawn of `/bin/true`),
//! `pingpong.c` (pipe and socketpair ping-pong with a forked child), `stream.c` (pipe and
//! socketpair throughput from a forked child, started by a spin flag in a shared page).
//!
//! Forked children only make raw system calls (`read`, `write`, `close`, `_exit`) and never
//! allocate, so forking is sound even if the parent has other threads.

#![allow(
    unsafe_code,
    reason = "fork, _exit, waitpid, posix_spawn and mmap have no safe wrapper"
)]
#![allow(
    clippy::disallowed_methods,
    reason = "the raw limit of fork is measured on libc::fork itself"
)]

use std::hint::spin_loop;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::pipe::PipeFlags;

use crate::report::{Bench, Family, Res};

/// Reaps `pid` (and only it), retrying on EINTR; returns the raw wait status.
pub(crate) fn reap(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer; waiting for one specific pid of our own.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Forks; the child runs `child` and `_exit`s with its result.
///
/// `child` must only make async-signal-safe calls (no allocation, no locks).
fn fork_child(child: impl FnOnce() -> i32) -> io::Result<libc::pid_t> {
    // SAFETY: the child only runs `child`, which by contract makes raw system calls only,
    // and then `_exit`s without running destructors or atexit handlers.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let code = child();
        // SAFETY: `_exit` is async-signal-safe and never returns.
        unsafe { libc::_exit(code) };
    }
    Ok(pid)
}

/// `read` until `buf` is full; EOF is an error.
fn read_all(fd: BorrowedFd<'_>, mut buf: &mut [u8]) -> rustix::io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::read(fd, &mut *buf) {
            Ok(0) => return Err(rustix::io::Errno::PIPE),
            Ok(n) => buf = &mut buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `write` until all of `buf` is written.
fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> rustix::io::Result<()> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ processes ----

/// A parent with a large, touched heap: `256 MiB` of pages written once.
#[derive(Debug)]
pub(crate) struct Ballast(#[allow(dead_code, reason = "held, never read")] Vec<u8>);

impl Ballast {
    /// Allocates `bytes` and writes every byte (so every page is resident).
    pub(crate) fn new(bytes: usize) -> Self {
        let v = std::hint::black_box(vec![1u8; bytes]);
        Self(v)
    }
}

/// Resident set size of this process in KiB (from /proc/self/status), for `#meta` lines.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `proc.fork_exit_wait`: fork, the child `_exit(0)`s, the parent waits; us per process.
#[derive(Debug)]
pub(crate) struct ForkExitWait {
    /// Processes per repetition.
    pub(crate) n: usize,
    /// Name suffix (`""` or `".rss256MiB"`).
    pub(crate) suffix: &'static str,
}

impl Bench for ForkExitWait {
    fn name(&self) -> String {
        format!("proc.fork_exit_wait{}", self.suffix)
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn measure(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        for _ in 0..self.n {
            let pid = fork_child(|| 0)?;
            reap(pid)?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e6)
    }
}

/// `proc.posix_spawn_true_wait`: posix_spawn of `/bin/true` (with `environ`), then waitpid.
#[derive(Debug)]
pub(crate) struct PosixSpawnTrue {
    /// Processes per repetition.
    pub(crate) n: usize,
    /// Name suffix (`""` or `".rss256MiB"`).
    pub(crate) suffix: &'static str,
}

impl Bench for PosixSpawnTrue {
    fn name(&self) -> String {
        format!("proc.posix_spawn_true_wait{}", self.suffix)
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn measure(&mut self) -> Res<f64> {
        let path = c"/bin/true";
        let argv: [*mut libc::c_char; 2] = [c"true".as_ptr().cast_mut(), ptr::null_mut()];
        let t0 = Instant::now();
        for _ in 0..self.n {
            let mut pid: libc::pid_t = 0;
            // SAFETY: `path` and `argv` are NUL-terminated and outlive the call; null file
            // actions and attributes are allowed; `environ` is the process's environment,
            // which nothing in this program modifies.
            let rc = unsafe {
                libc::posix_spawn(
                    &mut pid,
                    path.as_ptr(),
                    ptr::null(),
                    ptr::null(),
                    argv.as_ptr(),
                    libc::environ.cast_const(),
                )
            };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc).into());
            }
            let st = reap(pid)?;
            if st != 0 {
                return Err(format!("/bin/true exited with status {st:#x}").into());
            }
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e6)
    }
}

// ----------------------------------------------------------------- ping-pong ----

/// The kind of channel between parent and child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chan {
    /// Two `pipe(2)`s, one per direction.
    Pipe,
    /// One `AF_UNIX` `SOCK_STREAM` socketpair, used both ways.
    Socketpair,
}

/// `pingpong.pipe.64B` / `pingpong.socketpair_stream.64B`: the parent writes `msg` bytes,
/// a forked child reads them and writes them back; us per round trip (pingpong.c).
#[derive(Debug)]
pub(crate) struct PingPong {
    /// Channel kind.
    pub(crate) chan: Chan,
    /// Message size in bytes (at most 4096).
    pub(crate) msg: usize,
    /// Round trips per repetition.
    pub(crate) iters: usize,
    state: Option<PingPongState>,
}

#[derive(Debug)]
struct PingPongState {
    send: OwnedFd,
    recv: OwnedFd,
    child: libc::pid_t,
    buf: Vec<u8>,
}

impl PingPong {
    /// A ping-pong bench over `chan`.
    pub(crate) fn new(chan: Chan, msg: usize, iters: usize) -> Self {
        assert!(msg <= 4096);
        Self {
            chan,
            msg,
            iters,
            state: None,
        }
    }
}

impl Bench for PingPong {
    fn name(&self) -> String {
        match self.chan {
            Chan::Pipe => format!("pingpong.pipe.{}B", self.msg),
            Chan::Socketpair => format!("pingpong.socketpair_stream.{}B", self.msg),
        }
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, rounds: usize) -> Res<()> {
        // (parent send, child recv, child send, parent recv)
        let (p_send, c_recv, c_send, p_recv) = match self.chan {
            Chan::Pipe => {
                let (a_r, a_w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
                let (b_r, b_w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
                (a_w, a_r, b_w, b_r)
            }
            Chan::Socketpair => {
                let (s0, s1) = rustix::net::socketpair(
                    AddressFamily::UNIX,
                    SocketType::STREAM,
                    SocketFlags::CLOEXEC,
                    None,
                )?;
                let (s0b, s1b) = (s0.try_clone()?, s1.try_clone()?);
                (s0, s1, s1b, s0b)
            }
        };
        let total = self.iters * rounds + 1; // +1: warm-up
        let msg = self.msg;
        let child = fork_child(|| {
            let mut buf = [7u8; 4096];
            for _ in 0..total {
                if read_all(c_recv.as_fd(), &mut buf[..msg]).is_err()
                    || write_all(c_send.as_fd(), &buf[..msg]).is_err()
                {
                    return 1;
                }
            }
            0
        })?;
        drop((c_recv, c_send));
        let mut st = PingPongState {
            send: p_send,
            recv: p_recv,
            child,
            buf: vec![7u8; msg],
        };
        write_all(st.send.as_fd(), &st.buf)?;
        read_all(st.recv.as_fd(), &mut st.buf)?;
        self.state = Some(st);
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let st = self.state.as_mut().ok_or("not set up")?;
        let t0 = Instant::now();
        for _ in 0..self.iters {
            write_all(st.send.as_fd(), &st.buf)?;
            read_all(st.recv.as_fd(), &mut st.buf)?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.iters as f64 * 1e6)
    }
    fn finish(&mut self) -> Res<()> {
        if let Some(st) = self.state.take() {
            let status = reap(st.child)?;
            if status != 0 {
                return Err(format!("{}: echo child status {status:#x}", self.name()).into());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- throughput ----

/// One anonymous shared page holding an atomic flag, inherited across fork.
#[derive(Debug)]
struct SharedFlag(NonNull<AtomicI32>);

impl SharedFlag {
    fn new() -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<AtomicI32>())
            .map(Self)
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    fn get(&self) -> &AtomicI32 {
        // SAFETY: the page is mapped read-write for the life of `self`, zero-filled (a valid
        // AtomicI32), page-aligned, and only ever accessed atomically.
        unsafe { self.0.as_ref() }
    }

    fn wait_for(&self, v: i32) {
        while self.get().load(Ordering::Acquire) != v {
            spin_loop();
        }
    }
}

impl Drop for SharedFlag {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the page mapped in `new`; no reference outlives `self`.
        unsafe { libc::munmap(self.0.as_ptr().cast(), 4096) };
    }
}

/// `pipe.throughput.*` / `socketpair.throughput.*`: a forked child writes `total / msg`
/// messages of `msg` bytes, the parent reads them into a reused buffer; MB/s (10^6 bytes).
/// A fresh channel and child per repetition; the clock starts when the parent releases the
/// child through a spin flag in a shared page (stream.c).
#[derive(Debug)]
pub(crate) struct Throughput {
    /// Channel kind (a socketpair is used one way here).
    pub(crate) chan: Chan,
    /// Message size in bytes.
    pub(crate) msg: usize,
    /// Bytes per repetition.
    pub(crate) total: usize,
    /// Size label in the name (`1KiB`, ...).
    pub(crate) label: &'static str,
    bufs: Option<(Vec<u8>, Vec<u8>, SharedFlag)>,
}

impl Throughput {
    /// A throughput bench over `chan`.
    pub(crate) fn new(chan: Chan, msg: usize, total: usize, label: &'static str) -> Self {
        Self {
            chan,
            msg,
            total,
            label,
            bufs: None,
        }
    }
}

impl Bench for Throughput {
    fn name(&self) -> String {
        match self.chan {
            Chan::Pipe => format!("pipe.throughput.{}", self.label),
            Chan::Socketpair => format!("socketpair.throughput.{}", self.label),
        }
    }
    fn unit(&self) -> &'static str {
        "MB/s"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.bufs = Some((vec![9u8; self.msg], vec![0u8; self.msg], SharedFlag::new()?));
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let (wbuf, rbuf, flag) = self.bufs.as_mut().ok_or("not set up")?;
        let count = (self.total / self.msg).max(1);
        let (rfd, wfd) = match self.chan {
            Chan::Pipe => rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?,
            Chan::Socketpair => rustix::net::socketpair(
                AddressFamily::UNIX,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )?,
        };
        flag.get().store(0, Ordering::SeqCst);
        let wbuf: &[u8] = wbuf;
        let flag_ref = &*flag;
        let child = fork_child(|| {
            // SAFETY: closing our copy of the read end, which nothing else in the child uses.
            unsafe { libc::close(std::os::fd::AsRawFd::as_raw_fd(&rfd)) };
            flag_ref.get().store(1, Ordering::SeqCst);
            flag_ref.wait_for(2);
            for _ in 0..count {
                if write_all(wfd.as_fd(), wbuf).is_err() {
                    return 1;
                }
            }
            0
        })?;
        drop(wfd);
        flag.wait_for(1);
        let t0 = Instant::now();
        flag.get().store(2, Ordering::SeqCst);
        for _ in 0..count {
            read_all(rfd.as_fd(), rbuf)?;
        }
        let dt = t0.elapsed().as_secs_f64();
        let status = reap(child)?;
        drop(rfd);
        if status != 0 || rbuf[self.msg - 1] != 9 {
            return Err(format!("{}: bad child status {status:#x} or data", self.name()).into());
        }
        Ok((count * self.msg) as f64 / dt / 1e6)
    }
}
