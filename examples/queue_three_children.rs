//! Three children each put a message; the parent gets all three (seed `003`, "进程队列").
//!
//! ```python
//! from multiprocessing import Process, Queue
//!
//! def fun(q, i):
//!     print("child process %s start put data" % i)
//!     q.put("i am %s communicate throught queue" % i)
//!
//! if __name__ == '__main__':
//!     q = Queue()
//!     process_list = []
//!     for i in range(3):
//!         p = Process(target=fun, args=(q, i,))
//!         p.start()
//!         process_list.append(p)
//!     for i in process_list:
//!         p.join()
//!     print('main process get queue data')
//!     print(q.get())
//!     print(q.get())
//!     print(q.get())
//!     print("end test")
//! ```
//!
//! The children may run in any order, so the messages come in any order. Joining before
//! getting is safe here as in Python: each `put` returns once its item is in the queue.
// expect: child process 0 start put data
// expect: child process 2 start put data
// expect: main process get queue data
// expect: i am 1 communicate through queue
// expect: end test
// expect-lines: 8

use multiproc::{Process, Queue};

fn fun((q, i): (Queue<String>, u32)) {
    println!("child process {i} start put data");
    q.put(format!("i am {i} communicate through queue"))
        .unwrap();
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let q = Queue::new()?;
    let mut process_list = Vec::new();
    for i in 0..3 {
        let mut p = Process::new(fun, (q.clone(), i));
        p.start()?;
        process_list.push(p);
    }
    for p in &process_list {
        assert_eq!(p.join()?, 0);
    }
    println!("main process get queue data");
    for _ in 0..3 {
        println!("{}", q.get()?);
    }
    println!("end test");
    Ok(())
}
