//! Futex waits with deadlines, and the liveness of a lock's owner process.

use std::os::fd::OwnedFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::futex;

/// Outcome of one futex sleep.
pub(crate) enum Woke {
    /// Woken, or the word had already changed: look again.
    Retry,
    /// The sleep's time ran out.
    TimedOut,
}

/// Sleeps while `word == expected`, at most `nap` (forever with `None`). Shared (not
/// PRIVATE) futex: waiters and wakers are different processes.
pub(crate) fn wait(word: &AtomicU32, expected: u32, nap: Option<Duration>) -> Woke {
    let ts = nap.map(|d| {
        rustix::time::Timespec::try_from(d).unwrap_or(rustix::time::Timespec {
            tv_sec: i64::MAX / 2,
            tv_nsec: 0,
        })
    });
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Err(rustix::io::Errno::TIMEDOUT) => Woke::TimedOut,
        _ => Woke::Retry,
    }
}

/// Wakes up to `n` waiters (clamped to 1..=i32::MAX: the kernel reads the count as a C int,
/// and 0 or u32::MAX would wake one).
pub(crate) fn wake(word: &AtomicU32, n: u32) {
    if n == 0 {
        return;
    }
    let _ = futex::wake(word, futex::Flags::empty(), n.min(i32::MAX as u32));
}

/// Time left before `deadline` (`None`: no deadline); `Some(ZERO)` once it passed.
pub(crate) fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// A deadline `timeout` from now (`None` if it cannot be represented: no deadline).
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

// Tokens. A lock owner (or a condition waiter) records its pid and a 32-bit token; a checker
// that later finds a live process at that pid compares that process's token with the recorded
// one, so a process that got the pid of a dead owner is not taken for the owner.
//
// Since Linux 6.9 every process has its own pidfs inode, and the low 31 bits of the inode of a
// pidfd make the token. Before 6.9 every pidfd shares one anonymous inode, so the token falls
// back to the process's start time (`/proc/<pid>/stat` field 22, clock ticks since boot). Bit
// 31 says which kind a token is, so a checker compares like with like whatever its own kind:
// the kind a process records depends only on the kernel (and on the test switch below).

/// Bit 31 of a token: the value is a start time (else a pidfs inode).
pub const START_TIME: u32 = 1 << 31;
const VALUE: u32 = !START_TIME;
/// `statfs` magic of pidfs (`include/uapi/linux/magic.h`).
const PIDFS_MAGIC: u64 = 0x5049_4446;

static FORCE_START_TIME: AtomicBool = AtomicBool::new(false);
/// `[pid, token]` of the calling process, recomputed when the pid changes (a fork child).
static OWN: [AtomicU32; 2] = [AtomicU32::new(0), AtomicU32::new(0)];

/// Makes the calling process record start-time tokens, as on kernels before 6.9, even where
/// pidfs inodes exist (`false`: back to the kernel's kind). For tests of the fallback; it
/// changes only what this process (and its later fork children) records.
#[doc(hidden)]
pub fn force_start_time_tokens(on: bool) {
    FORCE_START_TIME.store(on, Ordering::SeqCst);
    OWN[0].store(0, Ordering::SeqCst);
}

/// Whether pidfds have their own inodes here (pidfs, Linux 6.9+); checked once per process.
fn pidfs() -> bool {
    static PIDFS: OnceLock<bool> = OnceLock::new();
    *PIDFS.get_or_init(|| {
        own_pidfd()
            .and_then(|fd| rustix::fs::fstatfs(&fd).ok())
            .is_some_and(|st| st.f_type as u64 == PIDFS_MAGIC)
    })
}

fn own_pidfd() -> Option<OwnedFd> {
    let me = rustix::process::Pid::from_raw(multiproc_core::current_pid() as i32)?;
    rustix::process::pidfd_open(me, rustix::process::PidfdFlags::empty()).ok()
}

/// The start time (field 22) in a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself: count from the last `)`.
pub(crate) fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is the first, so field 22 is the 20th.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The start-time token of the process `pid` now (`None` if it cannot be read).
pub(crate) fn start_time_token(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_start_time(&stat)? as u32 & VALUE | START_TIME)
}

/// The pidfs-inode token of the process behind `fd`.
fn inode_token(fd: &OwnedFd) -> Option<u32> {
    rustix::fs::fstat(fd)
        .ok()
        .map(|st| st.st_ino as u32 & VALUE)
}

/// The token the calling process records (0 if unknown: then only a pid that is gone or has
/// exited counts as dead).
pub(crate) fn own_token() -> u32 {
    own_token_for(multiproc_core::current_pid())
}

/// [`own_token`] when the caller already has its pid `me` (the fast path of the locks).
#[inline]
pub(crate) fn own_token_for(me: u32) -> u32 {
    if OWN[0].load(Ordering::Acquire) == me {
        return OWN[1].load(Ordering::Relaxed);
    }
    let token = if pidfs() && !FORCE_START_TIME.load(Ordering::SeqCst) {
        own_pidfd().as_ref().and_then(inode_token)
    } else {
        start_time_token(me)
    }
    .unwrap_or(0);
    OWN[1].store(token, Ordering::Relaxed);
    OWN[0].store(me, Ordering::Release);
    token
}

/// What a liveness check of a lock owner found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Alive,
    Dead,
    /// The pid runs, but it is not the process that recorded the token: reused.
    Reused,
}

fn exited(fd: &OwnedFd) -> bool {
    // An exited process that was not reaped yet (a zombie) polls readable.
    let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero)).unwrap_or(0) > 0
}

/// Checks the process `pid` that recorded `token` (0: unknown). Only called after a waiter
/// slept a while, or for a condition waiter about to be notified: it costs a few system calls
/// (and a read of `/proc/<pid>/stat` for a start-time token).
pub(crate) fn owner(pid: u32, token: u32) -> Owner {
    let Some(p) = rustix::process::Pid::from_raw(pid as i32) else {
        return Owner::Dead;
    };
    // The pidfd pins the process now at `pid`: while it has not exited, the pid cannot pass
    // to another process, so what is read about `pid` below is about this process.
    let fd = match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Owner::Dead,
        // EPERM and the like: we cannot tell; assume it lives.
        Err(_) => return Owner::Alive,
    };
    if exited(&fd) {
        return Owner::Dead;
    }
    if token == 0 {
        return Owner::Alive;
    }
    let now = if token & START_TIME != 0 {
        let now = start_time_token(pid);
        // Exited meanwhile: the start time read may already be another process's.
        if exited(&fd) {
            return Owner::Dead;
        }
        now
    } else {
        // Read through the pidfd itself: always this process's.
        inode_token(&fd)
    };
    match now {
        Some(now) if now != token => Owner::Reused,
        // Unreadable (`/proc` hidden, say): we cannot tell; assume it lives.
        _ => Owner::Alive,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("start sleep")
    }

    fn pidfd_of(pid: u32) -> OwnedFd {
        let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).unwrap()
    }

    #[test]
    fn start_time_is_field_22_even_with_odd_names() {
        let fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        let line = format!("1234 (a) b ) (c) {}\n", fields.join(" "));
        assert_eq!(parse_start_time(&line), Some(22));
        assert_eq!(parse_start_time("1234 (x) S 1"), None);
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_start_time_token_matches_proc_self() {
        let me = std::process::id();
        let t = start_time_token(me).unwrap();
        assert_eq!(t & START_TIME, START_TIME, "kind bit");
        assert_eq!(start_time_token(me), Some(t), "stable");
        assert_eq!(owner(me, t), Owner::Alive);
    }

    #[test]
    fn start_time_tokens_tell_a_later_process_from_an_earlier_one() {
        // The fallback path, exercised whatever the kernel: a token recorded by one process
        // and checked against a later process at the recorded pid (simulated: checked
        // against the later process's pid) says "reused"; its own token says "alive".
        let mut first = sleeper();
        let a = first.id();
        let token_a = start_time_token(a).unwrap();
        assert_eq!(owner(a, token_a), Owner::Alive);
        first.kill().unwrap();
        // Killed, not reaped yet: a zombie is dead.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while owner(a, token_a) != Owner::Dead {
            assert!(std::time::Instant::now() < deadline, "zombie seen alive");
            std::thread::yield_now();
        }
        first.wait().unwrap();
        assert_eq!(owner(a, token_a), Owner::Dead, "reaped");
        // A later process (the start time has a resolution of one clock tick: start
        // processes until one starts in a later tick).
        let (mut later, token_b) = loop {
            let mut c = sleeper();
            let t = start_time_token(c.id()).unwrap();
            if t != token_a {
                break (c, t);
            }
            assert!(std::time::Instant::now() < deadline, "no later tick");
            c.kill().unwrap();
            c.wait().unwrap();
        };
        let b = later.id();
        assert_eq!(owner(b, token_b), Owner::Alive);
        assert_eq!(owner(b, token_a), Owner::Reused);
        later.kill().unwrap();
        later.wait().unwrap();
    }

    #[test]
    fn inode_tokens_tell_processes_apart_on_pidfs() {
        if !pidfs() {
            return; // before Linux 6.9: only start-time tokens are recorded
        }
        let c = sleeper();
        let d = sleeper();
        let tc = inode_token(&pidfd_of(c.id())).unwrap();
        let td = inode_token(&pidfd_of(d.id())).unwrap();
        assert_ne!(tc, td);
        assert_eq!(tc & START_TIME, 0, "kind bit");
        assert_eq!(owner(c.id(), tc), Owner::Alive);
        assert_eq!(owner(c.id(), td), Owner::Reused);
        for mut x in [c, d] {
            x.kill().unwrap();
            x.wait().unwrap();
        }
    }

    #[test]
    fn forcing_the_fallback_changes_the_own_token_kind() {
        force_start_time_tokens(true);
        let t = own_token();
        force_start_time_tokens(false);
        let me = multiproc_core::current_pid();
        assert_eq!(Some(t), start_time_token(me));
        assert_eq!(owner(me, t), Owner::Alive);
        let u = own_token();
        assert_eq!(u & START_TIME == 0, pidfs(), "kind follows the kernel");
        assert_eq!(owner(me, u), Owner::Alive);
    }
}
