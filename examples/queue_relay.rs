//! One queue handed through ten children: each takes one item and puts its own index (seed
//! `001`, "使用queues的Queue类共享数据").
//!
//! ```python
//! import multiprocessing
//! from multiprocessing import Process
//! from multiprocessing import queues
//!
//! def func(i, q):
//!     ret = q.get()
//!     print("进程%s从队列里获取了一个%s，然后又向队列里放入了一个%s" % (i, ret, i))
//!     q.put(i)
//!
//! if __name__ == "__main__":
//!     lis = queues.Queue(20, ctx=multiprocessing)
//!     lis.put(0)
//!     for i in range(10):
//!         p = Process(target=func, args=(i, lis,))
//!         p.start()
//! ```
//!
//! The children run in whatever order the scheduler picks; each takes what the one before it
//! left. The parent joins them all (Python's snippet leaves that to the interpreter's exit) and
//! takes the one item left.
// expect: took 0, then put
// expect: left in the queue:
// expect-lines: 11

use multiproc::{Process, Queue};

fn func((i, q): (u32, Queue<u32>)) {
    let ret = q.get().unwrap();
    println!("process {i} took {ret}, then put {i}");
    q.put(i).unwrap();
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let lis = Queue::with_maxsize(20)?;
    lis.put(0)?;
    let mut children = Vec::new();
    for i in 0..10 {
        let mut p = Process::new(func, (i, lis.clone()));
        p.start()?;
        children.push(p);
    }
    for p in &children {
        assert_eq!(p.join()?, 0);
    }
    println!("left in the queue: {}", lis.get()?);
    assert!(lis.empty());
    Ok(())
}
