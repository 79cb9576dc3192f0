//! A writer and an endless reader on a bounded queue (seed `002`, "Queue").
//!
//! ```python
//! from multiprocessing import Process, Queue
//! import os
//!
//! def write(q):
//!     for value in ['A', 'B', 'C', 'D']:
//!         print('Process %s put %s to queue.' % (os.getpid(), value))
//!         q.put(value)
//!
//! def read(q):
//!     while True:
//!         value = q.get(True)
//!         print('Process %s get %s from queue.' % (os.getpid(), value))
//!
//! if __name__ == '__main__':
//!     q = Queue(maxsize=4)
//!     pw = Process(target=write, args=(q,))
//!     pr = Process(target=read, args=(q,))
//!     pw.start()
//!     pr.start()
//!     pw.join()
//!     pr.terminate()
//! ```
//!
//! As in Python, the reader never ends on its own: the parent terminates it once the writer is
//! done. Before that it waits until the queue is empty and the reader has printed its last
//! line (Python's version may cut the reader's last lines short).
// expect: put A to queue.
// expect: put D to queue.
// expect: get A from queue.
// expect: get D from queue.
// expect: reader terminated
// expect-lines: 9

use multiproc::{Process, Queue, Semaphore};

fn write(q: Queue<String>) {
    for value in ["A", "B", "C", "D"] {
        println!("Process {} put {value} to queue.", std::process::id());
        q.put(value.to_string()).unwrap();
    }
}

fn read((q, printed): (Queue<String>, Semaphore)) {
    loop {
        let value = q.get().unwrap();
        println!("Process {} get {value} from queue.", std::process::id());
        printed.release().unwrap();
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let q = Queue::with_maxsize(4)?;
    let printed = Semaphore::new(0)?;
    let mut pw = Process::new(write, q.clone());
    let mut pr = Process::new(read, (q.clone(), printed.clone()));
    pw.start()?;
    pr.start()?;
    assert_eq!(pw.join()?, 0);
    // Let the reader print all four before it is stopped (not in Python's snippet).
    for _ in 0..4 {
        printed.acquire_raw(None);
    }
    pr.terminate()?;
    pr.join()?;
    println!("reader terminated (exit code {:?})", pr.exitcode());
    Ok(())
}
