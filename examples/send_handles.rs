//! Handles sent over a connection to a running child, and `wait` on several objects.
//!
//! ```python
//! from multiprocessing import Process, Pipe, Lock
//! from multiprocessing.connection import wait
//!
//! def child(ctl):
//!     lock, reply = ctl.recv()        # a Lock and a Connection, sent while running
//!     with lock:                      # blocks until the parent releases it
//!         reply.send(42)
//!
//! ctl, ctl_child = Pipe()
//! p = Process(target=child, args=(ctl_child,))
//! p.start()
//! lock = Lock(); lock.acquire()
//! mine, theirs = Pipe()
//! ctl.send((lock, theirs))            # Python pickles the handles with their fds
//! lock.release()
//! p.join()
//! print(wait([mine, p.sentinel]))     # both ready
//! print(mine.recv())
//! ```
//!
//! Handles travel over a `pipe()` connection (on its side socket) or a `socketpair()` one (a
//! Unix socket, as Python's `Pipe()`); over a one-way `simplex()` pipe the send is refused with
//! `Error::HandlesNeedSocket`. `wait` returns the indices of the ready objects.
// expect: ready: [0, 1]
// expect: child answered over the received connection: 42

use multiproc::{Connection, Lock, Process, Waitable, pipe, wait};

fn child(mut ctl: Connection) {
    let (lock, mut reply): (Lock, Connection) = ctl.recv().unwrap();
    let Ok(_guard) = lock.acquire() else {
        panic!("the lock's owner died");
    };
    reply.send(&42u32).unwrap();
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let (mut ctl, ctl_child) = pipe()?;
    let mut p = Process::new(child, ctl_child);
    p.start()?;
    let lock = Lock::new()?;
    let Ok(guard) = lock.acquire() else {
        panic!("a new lock");
    };
    let (mut mine, theirs) = pipe()?;
    ctl.send(&(&lock, &theirs))?;
    drop(theirs);
    drop(guard);
    assert_eq!(p.join()?, 0);
    let sentinel = p.sentinel()?;
    let objects: [&dyn Waitable; 2] = [&mine, &sentinel];
    println!("ready: {:?}", wait(&objects, None)?);
    let answer: u32 = mine.recv()?;
    println!("child answered over the received connection: {answer}");
    Ok(())
}
