//! The machine's raw limits for the operations multiproc performs, in Rust over libc and rustix.
//!
//! Each bench replicates the method of the C file in the reference harness (`bench/limits/`)
//! whose figure name it prints: `proc.c` (fork/`_exit`/waitpid, posix_spawn of `/bin/true`),
//! `pingpong.c` (pipe, socketpair, shared-futex and process-shared-semaphore ping-pong with a
//! forked child), `stream.c` (pipe and socketpair throughput from a forked child, started by a
//! spin flag in a shared page; the busy-waiting SPSC ring of u64), `locks.c` (spinlock, futex mutex, pshared `pthread_mutex_t` and
//! `sem_t` in shared memory: uncontended, and two processes incrementing one counter) and
//! `mem.c` (memcpy bandwidth; POSIX shm create/attach/unlink; a child writing 256 MiB into a
//! fresh segment and the parent reading it; a child filling an 8 MB segment).
//!
//! Forked children only make raw system calls (`read`, `write`, `close`, `mmap`, `futex`,
//! `_exit`), atomics, `memcpy`/`memset`, and glibc's semaphore and mutex calls (futex-based),
//! and never allocate, so forking is sound even if the parent has other threads.

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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
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

/// `posix_spawn` of `path` with `argv`, then waitpid, `n` times; the mean in µs.
fn spawn_and_wait(n: usize, path: &std::ffi::CStr, argv: &[&std::ffi::CStr]) -> Res<f64> {
    let mut args: Vec<*mut libc::c_char> = argv.iter().map(|a| a.as_ptr().cast_mut()).collect();
    args.push(ptr::null_mut());
    let t0 = Instant::now();
    for _ in 0..n {
        let mut pid: libc::pid_t = 0;
        // SAFETY: `path` and the `argv` strings are NUL-terminated and outlive the call, and
        // `args` is NULL-terminated; null file actions and attributes are allowed; `environ`
        // is the process's environment, which nothing in this program modifies.
        let rc = unsafe {
            libc::posix_spawn(
                &mut pid,
                path.as_ptr(),
                ptr::null(),
                ptr::null(),
                args.as_ptr(),
                libc::environ.cast_const(),
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc).into());
        }
        let st = reap(pid)?;
        if st != 0 {
            return Err(format!("{path:?} exited with status {st:#x}").into());
        }
    }
    Ok(t0.elapsed().as_secs_f64() / n as f64 * 1e6)
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
        spawn_and_wait(self.n, c"/bin/true", &[c"true"])
    }
}

/// The argument with which this binary exits at once, first thing in `main`: the exec floor of
/// the spawn start method (loading this executable and its libraries, std's start-up).
pub(crate) const EXIT_AT_ONCE: &str = "--exit-at-once";

/// `proc.posix_spawn_self_wait`: posix_spawn of this very executable (`/proc/self/exe`,
/// argv `[argv0, --exit-at-once]`), which leaves in `main` at once, then waitpid. What a spawn
/// child costs before multiproc does anything in it.
pub(crate) struct PosixSpawnSelf {
    /// Processes per repetition.
    pub(crate) n: usize,
    /// Name suffix (`""` or `".rss256MiB"`).
    pub(crate) suffix: &'static str,
}

impl Bench for PosixSpawnSelf {
    fn name(&self) -> String {
        format!("proc.posix_spawn_self_wait{}", self.suffix)
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn measure(&mut self) -> Res<f64> {
        let arg = std::ffi::CString::new(EXIT_AT_ONCE).expect("no NUL");
        spawn_and_wait(
            self.n,
            c"/proc/self/exe",
            &[c"multiproc-benches", arg.as_c_str()],
        )
    }
}

/// `proc.forkserver_raw`: the floor of the forkserver method. A server process (forked once,
/// in `setup`) waits on a socket; per child the client writes one byte, the server forks a
/// child that `_exit`s at once, reaps it with `waitpid` and writes its status back, which the
/// client reads. The same three process wake-ups as multiproc's forkserver (the request, the
/// child's end, the reply), with nothing else: no record, no fd passing, no spare child.
pub(crate) struct ForkserverRaw {
    /// Children per repetition.
    pub(crate) n: usize,
    server: Option<(OwnedFd, libc::pid_t)>,
}

impl ForkserverRaw {
    pub(crate) fn new(n: usize) -> ForkserverRaw {
        ForkserverRaw { n, server: None }
    }
}

/// The raw server's loop: one request byte in, one fork, the status out; ends at EOF.
fn raw_forkserver_loop(sock: RawFd) -> i32 {
    let mut byte = 0u8;
    loop {
        // SAFETY: reading one byte into a local from an fd this process owns.
        let r = unsafe { libc::read(sock, (&raw mut byte).cast(), 1) };
        if r <= 0 {
            return 0;
        }
        // SAFETY: this process is single-threaded (a fork of the benchmark's main thread);
        // the grandchild only calls `_exit`.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: `_exit` is async-signal-safe and never returns.
            unsafe { libc::_exit(0) };
        }
        let mut status: libc::c_int = 0;
        // SAFETY: a valid out-pointer; waiting for our own child `pid`.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        // SAFETY: writing 4 bytes from a local to an fd this process owns.
        unsafe { libc::write(sock, (&raw const status).cast(), 4) };
    }
}

impl Bench for ForkserverRaw {
    fn name(&self) -> String {
        "proc.forkserver_raw".to_string()
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        let (mine, theirs) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        let (raw, client) = (theirs.as_raw_fd(), mine.as_raw_fd());
        let pid = fork_child(|| {
            // SAFETY: closes the server's inherited copy of the client's end (so that it sees
            // end-of-file when the client closes its own), which nothing else in it uses.
            unsafe { libc::close(client) };
            raw_forkserver_loop(raw)
        })?;
        drop(theirs);
        self.server = Some((mine, pid));
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let (sock, _) = self
            .server
            .as_ref()
            .ok_or("the raw forkserver is not running")?;
        let mut status = [0u8; 4];
        let t0 = Instant::now();
        for _ in 0..self.n {
            rustix::io::write(sock, &[1])?;
            read_all(sock.as_fd(), &mut status)?;
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e6)
    }
    fn finish(&mut self) -> Res<()> {
        if let Some((sock, pid)) = self.server.take() {
            drop(sock);
            reap(pid)?;
        }
        Ok(())
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
    /// A TCP connection over the loopback interface (`TCP_NODELAY`), used both ways.
    Tcp,
}

/// Two connected TCP sockets over 127.0.0.1, with `TCP_NODELAY` (as multiproc's
/// `Listener`/`Client` connections): the accepted one first.
fn tcp_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let client = std::net::TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for s in [&server, &client] {
        s.set_nodelay(true)?;
    }
    Ok((server.into(), client.into()))
}

/// `pingpong.pipe.64B` / `pingpong.socketpair_stream.64B` / `pingpong.tcp_loopback.64B`: the
/// parent writes `msg` bytes, a forked child reads them and writes them back; us per round
/// trip (pingpong.c).
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
            Chan::Tcp => format!("pingpong.tcp_loopback.{}B", self.msg),
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
            Chan::Socketpair | Chan::Tcp => {
                let (s0, s1) = if self.chan == Chan::Tcp {
                    tcp_pair()?
                } else {
                    rustix::net::socketpair(
                        AddressFamily::UNIX,
                        SocketType::STREAM,
                        SocketFlags::CLOEXEC,
                        None,
                    )?
                };
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
            Chan::Tcp => format!("tcp.throughput.{}", self.label),
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
            Chan::Tcp => tcp_pair()?,
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

/// `pipe.small_msg_rate.1read_per_msg`: a forked child writes `n` messages of 12 bytes (a
/// 4-byte length and an 8-byte payload, as a framed small int), one `write` each, into a
/// `pipe(2)`; the parent reads them with one `read` per message; messages/s (stream.c's
/// `small_msgs`, unbatched). The bound of a trivial task sent and answered one message at a
/// time (`benches/pairs.tsv` counts two messages per task).
#[derive(Debug)]
pub(crate) struct SmallMsgRate {
    n: usize,
    flag: Option<SharedFlag>,
}

impl SmallMsgRate {
    /// The bench, `n` messages per repetition.
    pub(crate) fn new(n: usize) -> Self {
        Self { n, flag: None }
    }
}

impl Bench for SmallMsgRate {
    fn name(&self) -> String {
        "pipe.small_msg_rate.1read_per_msg".into()
    }
    fn unit(&self) -> &'static str {
        "items/s"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.flag = Some(SharedFlag::new()?);
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        const MSG: [u8; 12] = [8, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let flag = self.flag.as_ref().ok_or("not set up")?;
        let n = self.n;
        let (rfd, wfd) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        flag.get().store(0, Ordering::SeqCst);
        let child = fork_child(|| {
            // SAFETY: closing our copy of the read end, which nothing else in the child uses.
            unsafe { libc::close(rfd.as_raw_fd()) };
            flag.get().store(1, Ordering::SeqCst);
            flag.wait_for(2);
            for _ in 0..n {
                if write_all(wfd.as_fd(), &MSG).is_err() {
                    return 1;
                }
            }
            0
        })?;
        drop(wfd);
        flag.wait_for(1);
        let t0 = Instant::now();
        flag.get().store(2, Ordering::SeqCst);
        let mut m = [0u8; 12];
        for _ in 0..n {
            read_all(rfd.as_fd(), &mut m)?;
        }
        let dt = t0.elapsed().as_secs_f64();
        let status = reap(child)?;
        if status != 0 || m != MSG {
            return Err(format!("{}: bad child status {status:#x} or data", self.name()).into());
        }
        Ok(n as f64 / dt)
    }
}

// ------------------------------------------------------------ shared memory ----

/// An anonymous shared mapping (`MAP_SHARED | MAP_ANONYMOUS`, inherited across fork),
/// zero-filled: the `shared_map` of the reference harness's `common.h`.
#[derive(Debug)]
struct AnonShared {
    ptr: NonNull<u8>,
    len: usize,
}

impl AnonShared {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        NonNull::new(p.cast::<u8>())
            .map(|ptr| Self { ptr, len })
            .ok_or_else(|| io::Error::other("mmap returned null"))
    }

    /// The mapping as a `T` (the mapping is page-aligned, zero-filled and at least as long).
    fn as_ptr<T>(&self) -> *mut T {
        debug_assert!(std::mem::size_of::<T>() <= self.len);
        self.ptr.as_ptr().cast()
    }
}

impl Drop for AnonShared {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `FUTEX_WAIT` on a word of a shared mapping (no `FUTEX_PRIVATE_FLAG`: across processes).
fn futex_wait(word: &AtomicI32, val: i32) {
    // SAFETY: `word` is a live, aligned 32-bit futex word; null timeout: wait until woken.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            val,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0,
        )
    };
}

/// `FUTEX_WAKE` of up to `n` waiters of a shared futex word.
fn futex_wake(word: &AtomicI32, n: i32) {
    // SAFETY: as in `futex_wait`; a wake-up touches no memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            ptr::null::<libc::timespec>(),
            ptr::null::<u32>(),
            0,
        )
    };
}

/// `sem_wait`, retried on EINTR.
///
/// # Safety
///
/// `s` points to a live, initialised `sem_t`.
unsafe fn sem_wait(s: *mut libc::sem_t) {
    // SAFETY: the caller's promise.
    while unsafe { libc::sem_wait(s) } != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
    {}
}

/// One byte over a pipe (mem.c's `sig_send`): blocking signals, so a waiting side sleeps.
fn sig_send(fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
    write_all(fd, &[1])
}

/// Waits for one byte (mem.c's `sig_wait`).
fn sig_wait(fd: BorrowedFd<'_>) -> rustix::io::Result<()> {
    read_all(fd, &mut [0u8])
}

// ---------------------------------------------------------------------- locks ----

/// The lock kinds of locks.c.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// A compare-and-swap spinlock.
    Spin,
    /// Drepper's "mutex3" futex lock (shared futex operations).
    Futex,
    /// A `PTHREAD_PROCESS_SHARED` `pthread_mutex_t`.
    Pthread,
    /// A process-shared POSIX semaphore of initial value 1 (what CPython's `Lock` is).
    Sem,
}

impl LockKind {
    /// Every kind, in locks.c's order.
    pub(crate) const ALL: [LockKind; 4] = [
        LockKind::Spin,
        LockKind::Futex,
        LockKind::Pthread,
        LockKind::Sem,
    ];

    fn label(self) -> &'static str {
        match self {
            LockKind::Spin => "spin_cas",
            LockKind::Futex => "futex_mutex",
            LockKind::Pthread => "pthread_mutex_pshared",
            LockKind::Sem => "posix_sem_pshared",
        }
    }
}

/// locks.c's `struct shared`: each word on its own cache line.
#[repr(C)]
struct LockWords {
    spin: AtomicI32,
    _pad0: [u8; 60],
    fx: AtomicI32,
    _pad1: [u8; 60],
    mtx: libc::pthread_mutex_t,
    _pad2: [u8; 64],
    sem: libc::sem_t,
    _pad3: [u8; 64],
    go: AtomicI32,
    _pad4: [u8; 60],
    /// The plain counter the lock under test protects (relaxed load and store: a plain
    /// increment, as `s->counter++` in C).
    counter: AtomicI64,
}

/// The locks of locks.c in one shared mapping, inherited by forked children.
#[derive(Debug)]
struct Locks {
    map: AnonShared,
}

impl Locks {
    fn new() -> io::Result<Self> {
        let map = AnonShared::new(4096.max(std::mem::size_of::<LockWords>()))?;
        let w = map.as_ptr::<LockWords>();
        // SAFETY: `w` points to zeroed, writable, suitably aligned memory that nothing else
        // uses yet; the attribute object lives on our stack for the duration of the calls.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            if libc::pthread_mutexattr_init(&mut attr) != 0
                || libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED) != 0
                || libc::pthread_mutex_init(&raw mut (*w).mtx, &attr) != 0
            {
                return Err(io::Error::other("pthread_mutex_init (pshared) failed"));
            }
            libc::pthread_mutexattr_destroy(&mut attr);
            if libc::sem_init(&raw mut (*w).sem, 1, 1) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Self { map })
    }

    fn w(&self) -> *mut LockWords {
        self.map.as_ptr()
    }

    fn word(&self, which: fn(&LockWords) -> &AtomicI32) -> &AtomicI32 {
        // SAFETY: the mapping lives as long as `self`; atomics may be shared by reference.
        which(unsafe { &*self.w() })
    }

    fn go(&self) -> &AtomicI32 {
        self.word(|w| &w.go)
    }

    fn counter(&self) -> &AtomicI64 {
        // SAFETY: as in `word`.
        unsafe { &(*self.w()).counter }
    }

    #[inline]
    fn lock(&self, k: LockKind) {
        match k {
            LockKind::Spin => {
                let l = self.word(|w| &w.spin);
                while l
                    .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    while l.load(Ordering::Relaxed) != 0 {
                        spin_loop();
                    }
                }
            }
            LockKind::Futex => {
                let l = self.word(|w| &w.fx);
                let mut c = match l.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => return,
                    Err(c) => c,
                };
                if c != 2 {
                    c = l.swap(2, Ordering::Acquire);
                }
                while c != 0 {
                    futex_wait(l, 2);
                    c = l.swap(2, Ordering::Acquire);
                }
            }
            // SAFETY: initialised in `new`, alive as long as `self`.
            LockKind::Pthread => unsafe {
                libc::pthread_mutex_lock(&raw mut (*self.w()).mtx);
            },
            // SAFETY: as above.
            LockKind::Sem => unsafe { sem_wait(&raw mut (*self.w()).sem) },
        }
    }

    #[inline]
    fn unlock(&self, k: LockKind) {
        match k {
            LockKind::Spin => self.word(|w| &w.spin).store(0, Ordering::Release),
            LockKind::Futex => {
                let l = self.word(|w| &w.fx);
                if l.fetch_sub(1, Ordering::Release) != 1 {
                    l.store(0, Ordering::Release);
                    futex_wake(l, 1);
                }
            }
            // SAFETY: initialised in `new`, alive as long as `self`, held by this process.
            LockKind::Pthread => unsafe {
                libc::pthread_mutex_unlock(&raw mut (*self.w()).mtx);
            },
            // SAFETY: as above.
            LockKind::Sem => unsafe {
                libc::sem_post(&raw mut (*self.w()).sem);
            },
        }
    }

    /// `lk; s->counter++; ulk` (no system call, no allocation: safe in a forked child).
    #[inline]
    fn incr(&self, k: LockKind) {
        self.lock(k);
        let c = self.counter();
        c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.unlock(k);
    }
}

impl Drop for Locks {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`; no process holds them any more (children are reaped
        // before the bench that owns `self` is dropped).
        unsafe {
            libc::sem_destroy(&raw mut (*self.w()).sem);
            libc::pthread_mutex_destroy(&raw mut (*self.w()).mtx);
        }
    }
}

/// `atomic.fetch_add.uncontended`: a sequentially consistent fetch-add on a shared line; ns
/// per operation, 5,000,000 per repetition (locks.c, for scale).
#[derive(Debug)]
pub(crate) struct AtomicFetchAdd {
    /// Operations per repetition.
    pub(crate) n: usize,
    locks: Option<Locks>,
}

impl AtomicFetchAdd {
    /// The bench, `n` operations per repetition.
    pub(crate) fn new(n: usize) -> Self {
        Self { n, locks: None }
    }
}

impl Bench for AtomicFetchAdd {
    fn name(&self) -> String {
        "atomic.fetch_add.uncontended".into()
    }
    fn unit(&self) -> &'static str {
        "ns"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.locks = Some(Locks::new()?);
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let go = self.locks.as_ref().ok_or("not set up")?.go();
        let t0 = Instant::now();
        for _ in 0..self.n {
            go.fetch_add(1, Ordering::SeqCst);
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e9)
    }
}

/// `lock.uncontended.<kind>`: lock, increment a shared counter, unlock; ns per iteration,
/// 2,000,000 per repetition, one unmeasured warm-up repetition (locks.c).
#[derive(Debug)]
pub(crate) struct LockUncontended {
    kind: LockKind,
    n: usize,
    locks: Option<Locks>,
}

impl LockUncontended {
    /// The bench of `kind`, `n` iterations per repetition.
    pub(crate) fn new(kind: LockKind, n: usize) -> Self {
        Self {
            kind,
            n,
            locks: None,
        }
    }
}

impl Bench for LockUncontended {
    fn name(&self) -> String {
        format!("lock.uncontended.{}", self.kind.label())
    }
    fn unit(&self) -> &'static str {
        "ns"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.locks = Some(Locks::new()?);
        self.measure()?; // warm-up (locks.c's r = -1)
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let s = self.locks.as_ref().ok_or("not set up")?;
        let t0 = Instant::now();
        for _ in 0..self.n {
            s.incr(self.kind);
        }
        Ok(t0.elapsed().as_secs_f64() / self.n as f64 * 1e9)
    }
}

/// `lock.contended2p.<kind>`: the parent and a forked child each increment the shared counter
/// `n` (100,000) times under the lock; ops/s over both. The child is forked before the clock
/// starts and released by a spin flag (locks.c).
#[derive(Debug)]
pub(crate) struct LockContended {
    kind: LockKind,
    n: usize,
    locks: Option<Locks>,
}

impl LockContended {
    /// The bench of `kind`, `n` increments per process per repetition.
    pub(crate) fn new(kind: LockKind, n: usize) -> Self {
        Self {
            kind,
            n,
            locks: None,
        }
    }
}

impl Bench for LockContended {
    fn name(&self) -> String {
        format!("lock.contended2p.{}", self.kind.label())
    }
    fn unit(&self) -> &'static str {
        "ops/s"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.locks = Some(Locks::new()?);
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let s = self.locks.as_ref().ok_or("not set up")?;
        let (k, n) = (self.kind, self.n);
        s.counter().store(0, Ordering::SeqCst);
        s.go().store(0, Ordering::SeqCst);
        let child = fork_child(|| {
            s.go().fetch_add(1, Ordering::SeqCst);
            while s.go().load(Ordering::SeqCst) < 2 {
                spin_loop();
            }
            for _ in 0..n {
                s.incr(k);
            }
            0
        })?;
        while s.go().load(Ordering::SeqCst) < 1 {
            spin_loop();
        }
        let t0 = Instant::now();
        s.go().fetch_add(1, Ordering::SeqCst);
        for _ in 0..n {
            s.incr(k);
        }
        let status = reap(child)?;
        let dt = t0.elapsed().as_secs_f64();
        let got = s.counter().load(Ordering::SeqCst);
        if status != 0 || got != 2 * n as i64 {
            return Err(format!("{}: child status {status:#x}, counter {got}", self.name()).into());
        }
        Ok(2.0 * n as f64 / dt)
    }
}

// ------------------------------------------------------- futex / sem ping-pong ----

/// Which shared-memory primitive a [`SyncPingPong`] alternates on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// One futex word: 1 "ball at the child", 0 "ball at the parent".
    Futex,
    /// Two process-shared POSIX semaphores.
    Sem,
}

/// `pingpong.futex_shared` / `pingpong.posix_sem_shared`: the parent hands the ball to a forked
/// child, which hands it back; us per round trip, 5,000 per repetition, one warm-up round
/// trip (pingpong.c).
#[derive(Debug)]
pub(crate) struct SyncPingPong {
    wake: Wake,
    iters: usize,
    state: Option<(AnonShared, libc::pid_t)>,
}

impl SyncPingPong {
    /// The bench over `wake`, `iters` round trips per repetition.
    pub(crate) fn new(wake: Wake, iters: usize) -> Self {
        Self {
            wake,
            iters,
            state: None,
        }
    }

    fn word(map: &AnonShared) -> &AtomicI32 {
        // SAFETY: the page lives as long as `map`, is zeroed (a valid AtomicI32) and aligned.
        unsafe { &*map.as_ptr::<AtomicI32>() }
    }

    fn sems(map: &AnonShared) -> (*mut libc::sem_t, *mut libc::sem_t) {
        let s = map.as_ptr::<libc::sem_t>();
        // SAFETY: two `sem_t` fit in the page.
        (s, unsafe { s.add(1) })
    }

    /// The parent's side of `n` round trips.
    fn serve(&self, n: usize) -> Res<()> {
        let (map, _) = self.state.as_ref().ok_or("not set up")?;
        match self.wake {
            Wake::Futex => {
                let w = Self::word(map);
                for _ in 0..n {
                    w.store(1, Ordering::Release);
                    futex_wake(w, 1);
                    while w.load(Ordering::Acquire) != 0 {
                        futex_wait(w, 1);
                    }
                }
            }
            Wake::Sem => {
                let (to_child, to_parent) = Self::sems(map);
                for _ in 0..n {
                    // SAFETY: initialised in `setup`, alive while `map` is.
                    unsafe {
                        libc::sem_post(to_child);
                        sem_wait(to_parent);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Bench for SyncPingPong {
    fn name(&self) -> String {
        match self.wake {
            Wake::Futex => "pingpong.futex_shared".into(),
            Wake::Sem => "pingpong.posix_sem_shared".into(),
        }
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, rounds: usize) -> Res<()> {
        let map = AnonShared::new(4096)?;
        let (to_child, to_parent) = Self::sems(&map);
        if self.wake == Wake::Sem {
            // SAFETY: zeroed, aligned room for two `sem_t` in a shared page.
            if unsafe {
                libc::sem_init(to_child, 1, 0) != 0 || libc::sem_init(to_parent, 1, 0) != 0
            } {
                return Err(io::Error::last_os_error().into());
            }
        }
        let total = self.iters * rounds + 1; // +1: warm-up
        let wake = self.wake;
        let w = Self::word(&map);
        let child = fork_child(|| {
            for _ in 0..total {
                match wake {
                    Wake::Futex => {
                        while w.load(Ordering::Acquire) != 1 {
                            futex_wait(w, 0);
                        }
                        w.store(0, Ordering::Release);
                        futex_wake(w, 1);
                    }
                    // SAFETY: initialised above, inherited mapping.
                    Wake::Sem => unsafe {
                        sem_wait(to_child);
                        libc::sem_post(to_parent);
                    },
                }
            }
            0
        })?;
        self.state = Some((map, child));
        self.serve(1)
    }
    fn measure(&mut self) -> Res<f64> {
        let t0 = Instant::now();
        self.serve(self.iters)?;
        Ok(t0.elapsed().as_secs_f64() / self.iters as f64 * 1e6)
    }
    fn finish(&mut self) -> Res<()> {
        if let Some((map, child)) = self.state.take() {
            let status = reap(child)?;
            if self.wake == Wake::Sem {
                let (a, b) = Self::sems(&map);
                // SAFETY: nobody waits on them any more (the child is reaped).
                unsafe {
                    libc::sem_destroy(a);
                    libc::sem_destroy(b);
                }
            }
            if status != 0 {
                return Err(format!("{}: child status {status:#x}", self.name()).into());
            }
        }
        Ok(())
    }
}

// ------------------------------------------------------------------ POSIX shm ----

/// `shm_open(name, flags, 0600)`.
fn shm_open(name: &std::ffi::CStr, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; the returned descriptor is new and ours.
    let fd = unsafe { libc::shm_open(name.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// `mmap(NULL, len, RW, MAP_SHARED | extra, fd, 0)`.
fn map_shared(fd: BorrowedFd<'_>, len: usize, extra: i32) -> io::Result<*mut u8> {
    // SAFETY: a fresh mapping at an address the kernel picks; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | extra,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

fn unmap(p: *mut u8, len: usize) {
    // SAFETY: callers pass a mapping of theirs that nothing references any more.
    unsafe { libc::munmap(p.cast(), len) };
}

/// `shm.create_1MiB`, `shm.attach_1MiB`, `shm.close_both_unlink`: `shm_open(O_CREAT|O_EXCL)` +
/// `ftruncate` + `mmap`; `shm_open` + `fstat` + `mmap`; `munmap` and `close` of both and
/// `shm_unlink`; us each, 1,000 per repetition (mem.c).
#[derive(Debug)]
pub(crate) struct ShmOps {
    n: usize,
    names: Vec<std::ffi::CString>,
}

impl ShmOps {
    /// The bench, `n` segments per repetition.
    pub(crate) fn new(n: usize) -> Self {
        Self {
            n,
            names: Vec::new(),
        }
    }
}

impl Bench for ShmOps {
    fn name(&self) -> String {
        "shm.create_1MiB".into()
    }
    fn names(&self) -> Vec<String> {
        [
            "shm.create_1MiB",
            "shm.attach_1MiB",
            "shm.close_both_unlink",
        ]
        .map(String::from)
        .to_vec()
    }
    fn unit(&self) -> &'static str {
        "us"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        // Names are made outside the timed region, as mem.c's snprintf.
        let pid = std::process::id();
        self.names = (0..self.n)
            .map(|i| std::ffi::CString::new(format!("/lim_{pid}_{i}")))
            .collect::<Result<_, _>>()?;
        Ok(())
    }
    fn measure_all(&mut self) -> Res<Vec<f64>> {
        const SZ: usize = 1 << 20;
        let (mut tc, mut ta, mut tu) = (0.0, 0.0, 0.0);
        for name in &self.names {
            let t0 = Instant::now();
            let fd = shm_open(name, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR)?;
            rustix::fs::ftruncate(&fd, SZ as u64)?;
            let p = map_shared(fd.as_fd(), SZ, 0)?;
            let t1 = Instant::now();
            let fd2 = shm_open(name, libc::O_RDWR)?;
            let st = rustix::fs::fstat(&fd2)?;
            let p2 = map_shared(fd2.as_fd(), st.st_size as usize, 0)?;
            let t2 = Instant::now();
            unmap(p2, SZ);
            drop(fd2);
            unmap(p, SZ);
            drop(fd);
            // SAFETY: a NUL-terminated name.
            unsafe { libc::shm_unlink(name.as_ptr()) };
            let t3 = Instant::now();
            tc += (t1 - t0).as_secs_f64();
            ta += (t2 - t1).as_secs_f64();
            tu += (t3 - t2).as_secs_f64();
        }
        let per = |t: f64| t / self.n as f64 * 1e6;
        Ok(vec![per(tc), per(ta), per(tu)])
    }
}

/// 256 MiB, the size of mem.c's child-write/parent-read scenario.
pub(crate) const BIG: usize = 256 << 20;

/// A private anonymous mapping of `len` bytes, written with `byte` (the C child's
/// `malloc` + `memset`, with a system call instead of the allocator: safe after fork).
fn touched_private(len: usize, byte: u8) -> Option<*mut u8> {
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `len` writable bytes just mapped.
    unsafe { ptr::write_bytes(p.cast::<u8>(), byte, len) };
    Some(p.cast())
}

/// `shm.child_write_256MiB_fresh`, `shm.parent_read_256MiB_after_child`,
/// `shm.write_then_read_256MiB_end_to_end` (with `.map_populate`: the child and the parent map
/// with `MAP_POPULATE`, inside their timed regions): the parent creates a fresh 256 MiB segment,
/// a forked child maps it and copies a pre-touched private buffer into it (first touch: tmpfs
/// pages allocated), the parent then copies the segment into a pre-touched buffer (its first
/// touch: minor faults). GB/s (10^9 bytes): the child's own clock; the parent's from the
/// child's wake-up to the end of its copy; the whole (mem.c).
#[derive(Debug)]
pub(crate) struct ShmChildWriteParentRead {
    populate: bool,
    size: usize,
    state: Option<(Vec<u8>, AnonShared)>,
    rep: usize,
}

impl ShmChildWriteParentRead {
    /// The bench, with or without `MAP_POPULATE`, `size` bytes ([`BIG`] but in smoke tests).
    pub(crate) fn new(populate: bool, size: usize) -> Self {
        Self {
            populate,
            size,
            state: None,
            rep: 0,
        }
    }
}

impl Bench for ShmChildWriteParentRead {
    fn name(&self) -> String {
        self.names().swap_remove(0)
    }
    fn names(&self) -> Vec<String> {
        let sfx = if self.populate { ".map_populate" } else { "" };
        vec![
            format!("shm.child_write_256MiB_fresh{sfx}"),
            format!("shm.parent_read_256MiB_after_child{sfx}"),
            format!("shm.write_then_read_256MiB_end_to_end{sfx}"),
        ]
    }
    fn unit(&self) -> &'static str {
        "GB/s"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        // The parent's pre-touched destination, and a shared page for the child's time.
        self.state = Some((vec![3u8; self.size], AnonShared::new(4096)?));
        Ok(())
    }
    fn measure_all(&mut self) -> Res<Vec<f64>> {
        let size = self.size;
        let (dst, page) = self.state.as_mut().ok_or("not set up")?;
        // SAFETY: the page is zeroed, aligned, shared, and only accessed atomically.
        let wtime = unsafe { &*page.as_ptr::<std::sync::atomic::AtomicU64>() };
        let name = std::ffi::CString::new(format!("/lim_big_{}_{}", std::process::id(), self.rep))?;
        self.rep += 1;
        let fd = shm_open(&name, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR)?;
        rustix::fs::ftruncate(&fd, size as u64)?;
        let populate = if self.populate { libc::MAP_POPULATE } else { 0 };
        let mut p = if self.populate {
            ptr::null_mut()
        } else {
            map_shared(fd.as_fd(), size, 0)?
        };
        let (up_r, up_w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let (down_r, down_w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        wtime.store(0, Ordering::SeqCst);
        let cfd = fd.as_fd(); // mem.c's child opens the name again; the same object
        let child = fork_child(|| {
            let Some(src) = touched_private(size, 5) else {
                return 1;
            };
            if sig_send(up_w.as_fd()).is_err() || sig_wait(down_r.as_fd()).is_err() {
                return 1;
            }
            let t0 = Instant::now();
            let Ok(cp) = map_shared(cfd, size, populate) else {
                return 1;
            };
            // SAFETY: two distinct mappings of size bytes each.
            unsafe { ptr::copy_nonoverlapping(src, cp, size) };
            wtime.store(t0.elapsed().as_secs_f64().to_bits(), Ordering::SeqCst);
            if sig_send(up_w.as_fd()).is_err() {
                return 1;
            }
            0
        })?;
        sig_wait(up_r.as_fd())?;
        let t0 = Instant::now();
        sig_send(down_w.as_fd())?;
        sig_wait(up_r.as_fd())?;
        let t1 = Instant::now();
        if self.populate {
            p = map_shared(fd.as_fd(), size, libc::MAP_POPULATE)?;
        }
        // SAFETY: `p` maps size bytes that the child has finished writing; `dst` is ours.
        unsafe { ptr::copy_nonoverlapping(p, dst.as_mut_ptr(), size) };
        let t2 = Instant::now();
        drop((up_r, up_w, down_r, down_w));
        let status = reap(child)?;
        let ok = status == 0 && dst[12345] == 5;
        dst[12345] = 3;
        unmap(p, size);
        drop(fd);
        // SAFETY: a NUL-terminated name.
        unsafe { libc::shm_unlink(name.as_ptr()) };
        if !ok {
            return Err(format!("{}: child status {status:#x} or bad data", self.name()).into());
        }
        let w = f64::from_bits(wtime.load(Ordering::SeqCst));
        let gbs = |secs: f64| size as f64 / secs / 1e9;
        Ok(vec![
            gbs(w),
            gbs((t2 - t1).as_secs_f64()),
            gbs((t2 - t0).as_secs_f64()),
        ])
    }
}

/// `shm.child_fill_8MB.fresh_segment` / `.reused_segment`: the analogue of `Array('d', 1e6)`
/// filled from a child. A child forked before the clock starts builds 10^6 doubles in a private
/// buffer, waits, then copies them (8 MB) into a shared segment the parent created; ms from the
/// parent's "go" to the child's "done". Fresh: a new segment every repetition (first touch
/// allocates its pages); reused: one segment for every repetition, after a warm-up (mem.c).
#[derive(Debug)]
pub(crate) struct ShmChildFill {
    fresh: bool,
    reused: Option<(*mut u8, usize)>,
    rep: usize,
}

const FILL: usize = 8_000_000;

impl ShmChildFill {
    /// The bench, a fresh segment per repetition or one reused.
    pub(crate) fn new(fresh: bool) -> Self {
        Self {
            fresh,
            reused: None,
            rep: 0,
        }
    }

    /// A new, already unlinked segment of `FILL` bytes, mapped.
    fn segment(&mut self) -> Res<*mut u8> {
        let name = std::ffi::CString::new(format!("/lim_arr_{}_{}", std::process::id(), self.rep))?;
        self.rep += 1;
        let fd = shm_open(&name, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR)?;
        rustix::fs::ftruncate(&fd, FILL as u64)?;
        let p = map_shared(fd.as_fd(), FILL, 0);
        // SAFETY: a NUL-terminated name.
        unsafe { libc::shm_unlink(name.as_ptr()) };
        Ok(p?)
    }
}

impl Bench for ShmChildFill {
    fn name(&self) -> String {
        let kind = if self.fresh { "fresh" } else { "reused" };
        format!("shm.child_fill_8MB.{kind}_segment")
    }
    fn unit(&self) -> &'static str {
        "ms"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        if !self.fresh {
            let p = self.segment()?;
            self.reused = Some((p, FILL));
            self.measure()?; // warm-up (mem.c's r = -1)
        }
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let p = match self.reused {
            Some((p, _)) => p,
            None => self.segment()?,
        };
        let (up_r, up_w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let (down_r, down_w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC)?;
        let child = fork_child(|| {
            let Some(src) = touched_private(FILL, 0) else {
                return 1;
            };
            let src = src.cast::<f64>();
            for i in 0..FILL / 8 {
                // SAFETY: inside the FILL bytes just mapped (8-byte aligned: page-aligned).
                unsafe { src.add(i).write(i as f64) };
            }
            if sig_send(up_w.as_fd()).is_err() || sig_wait(down_r.as_fd()).is_err() {
                return 1;
            }
            // SAFETY: two distinct mappings of FILL bytes each.
            unsafe { ptr::copy_nonoverlapping(src.cast::<u8>(), p, FILL) };
            if sig_send(up_w.as_fd()).is_err() {
                return 1;
            }
            0
        })?;
        sig_wait(up_r.as_fd())?;
        let t0 = Instant::now();
        sig_send(down_w.as_fd())?;
        sig_wait(up_r.as_fd())?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        drop((up_r, up_w, down_r, down_w));
        let status = reap(child)?;
        // SAFETY: the child is reaped; the segment holds FILL bytes, 8-byte aligned.
        let last = unsafe { p.cast::<f64>().add(FILL / 8 - 1).read() };
        if self.reused.is_none() {
            unmap(p, FILL);
        } else {
            // SAFETY: as above; the next repetition's child fills it again.
            unsafe { p.cast::<f64>().add(FILL / 8 - 1).write(0.0) };
        }
        if status != 0 || last != (FILL / 8 - 1) as f64 {
            return Err(format!("{}: child status {status:#x} or bad fill", self.name()).into());
        }
        Ok(ms)
    }
}

impl Drop for ShmChildFill {
    fn drop(&mut self) {
        if let Some((p, len)) = self.reused.take() {
            unmap(p, len);
        }
    }
}

// ------------------------------------------------------------ SPSC ring, memcpy ----

/// The ring of [`SpscRing`]: `RING` u64 slots in a shared mapping, the producer's and the
/// consumer's counters on their own cache lines (stream.c's `struct ring`).
const SPSC_SLOTS: usize = 4096;

#[repr(C, align(64))]
struct SpscLine(AtomicU64);

#[repr(C)]
struct Spsc {
    head: SpscLine,
    tail: SpscLine,
    flag: SpscLine,
    slot: [AtomicU64; SPSC_SLOTS],
}

/// `shm.spsc_ring_u64`: a forked child pushes 2,000,000 u64 through a single-producer
/// single-consumer ring of 4,096 slots in shared memory, both sides busy-waiting; the parent
/// sums them; items/s. A fresh child per repetition, released by a spin flag (stream.c).
#[derive(Debug)]
pub(crate) struct SpscRing {
    n: u64,
    map: Option<AnonShared>,
}

impl SpscRing {
    /// The bench, `n` items per repetition.
    pub(crate) fn new(n: u64) -> Self {
        Self { n, map: None }
    }
}

impl Bench for SpscRing {
    fn name(&self) -> String {
        "shm.spsc_ring_u64".into()
    }
    fn unit(&self) -> &'static str {
        "items/s"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.map = Some(AnonShared::new(std::mem::size_of::<Spsc>())?);
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let map = self.map.as_ref().ok_or("not set up")?;
        // SAFETY: the mapping is zeroed (valid atomics), aligned and as large as `Spsc`, and
        // lives as long as `map`; it is only accessed atomically.
        let q: &Spsc = unsafe { &*map.as_ptr::<Spsc>() };
        let n = self.n;
        q.head.0.store(0, Ordering::SeqCst);
        q.tail.0.store(0, Ordering::SeqCst);
        q.flag.0.store(0, Ordering::SeqCst);
        let ring = SPSC_SLOTS as u64;
        let child = fork_child(|| {
            q.flag.0.store(1, Ordering::SeqCst);
            while q.flag.0.load(Ordering::Acquire) != 2 {
                spin_loop();
            }
            let (mut h, mut tcache) = (0u64, 0u64);
            for i in 0..n {
                while h - tcache >= ring {
                    tcache = q.tail.0.load(Ordering::Acquire);
                    if h - tcache >= ring {
                        spin_loop();
                    }
                }
                q.slot[(h % ring) as usize].store(i, Ordering::Relaxed);
                h += 1;
                q.head.0.store(h, Ordering::Release);
            }
            0
        })?;
        while q.flag.0.load(Ordering::Acquire) != 1 {
            spin_loop();
        }
        let t0 = Instant::now();
        q.flag.0.store(2, Ordering::SeqCst);
        let (mut t, mut hcache, mut sum) = (0u64, 0u64, 0u64);
        while t < n {
            if t == hcache {
                hcache = q.head.0.load(Ordering::Acquire);
                if t == hcache {
                    spin_loop();
                    continue;
                }
            }
            sum = sum.wrapping_add(q.slot[(t % ring) as usize].load(Ordering::Relaxed));
            t += 1;
            q.tail.0.store(t, Ordering::Release);
        }
        let dt = t0.elapsed().as_secs_f64();
        let status = reap(child)?;
        if status != 0 || sum != n * (n - 1) / 2 {
            return Err(format!("{}: child status {status:#x} or bad sum", self.name()).into());
        }
        Ok(n as f64 / dt)
    }
}

/// `mem.memcpy_256MiB_warm`: one `memcpy` of 256 MiB between two warm (touched) private
/// buffers; GB/s (10^9 bytes) (mem.c's `bandwidth`).
#[derive(Debug)]
pub(crate) struct MemcpyWarm {
    size: usize,
    bufs: Option<(Vec<u8>, Vec<u8>)>,
}

impl MemcpyWarm {
    /// The bench over buffers of `size` bytes (mem.c: 256 MiB).
    pub(crate) fn new(size: usize) -> Self {
        Self { size, bufs: None }
    }
}

impl Bench for MemcpyWarm {
    fn name(&self) -> String {
        "mem.memcpy_256MiB_warm".into()
    }
    fn unit(&self) -> &'static str {
        "GB/s"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn setup(&mut self, _rounds: usize) -> Res<()> {
        self.bufs = Some((vec![1u8; self.size], vec![2u8; self.size]));
        Ok(())
    }
    fn measure(&mut self) -> Res<f64> {
        let (src, dst) = self.bufs.as_mut().ok_or("not set up")?;
        let t0 = Instant::now();
        dst.copy_from_slice(src);
        let dt = t0.elapsed().as_secs_f64();
        std::hint::black_box(&dst);
        Ok(self.size as f64 / dt / 1e9)
    }
    fn finish(&mut self) -> Res<()> {
        self.bufs = None;
        Ok(())
    }
}

// ----------------------------------------------------------------------- cpu ----

/// `cpu.parallel_speedup.2proc`: the ceiling of a 2-worker pool's speed-up on this machine
/// right now (proc.c's `parallel_speedup`): `items` units of pure CPU work in this process,
/// then two forked children doing half each; serial time / parallel time (x). The unit is the
/// pool figure's task ([`crate::pool::cpu_task`]) rather than proc.c's LCG loop, so the two
/// are the same work.
#[derive(Debug)]
pub(crate) struct ParallelSpeedup {
    items: u64,
}

impl ParallelSpeedup {
    /// The bench, `items` units per repetition (even).
    pub(crate) fn new(items: u64) -> Self {
        Self {
            items: items.max(2) & !1,
        }
    }
}

impl Bench for ParallelSpeedup {
    fn name(&self) -> String {
        "cpu.parallel_speedup.2proc".into()
    }
    fn unit(&self) -> &'static str {
        "x"
    }
    fn family(&self) -> Family {
        Family::Limit
    }
    fn measure(&mut self) -> Res<f64> {
        let task = crate::pool::cpu_task_fn();
        let t0 = Instant::now();
        let mut sink = 0u64;
        for i in 0..self.items {
            sink = sink.wrapping_add(task(i));
        }
        let ts = t0.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        let half = self.items / 2;
        let t0 = Instant::now();
        let mut kids = [0; 2];
        for (k, kid) in kids.iter_mut().enumerate() {
            let first = k as u64 * half;
            *kid = fork_child(|| {
                let mut acc = 0u64;
                for i in first..first + half {
                    acc = acc.wrapping_add(task(i));
                }
                i32::from(std::hint::black_box(acc) == 1)
            })?;
        }
        for kid in kids {
            let status = reap(kid)?;
            if status != 0 {
                return Err(format!("{}: child status {status:#x}", self.name()).into());
            }
        }
        Ok(ts / t0.elapsed().as_secs_f64())
    }
}
