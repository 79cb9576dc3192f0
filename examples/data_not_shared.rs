//! A list appended in children stays empty in the parent: each process has its own memory
//! (seed `001`, "进程间的数据共享").
//!
//! ```python
//! from multiprocessing import Process
//!
//! lis = []
//!
//! def foo(i):
//!     lis.append(i)
//!     print("This is Process ", i, " and lis is ", lis, " and lis.address is  ", id(lis))
//!
//! if __name__ == '__main__':
//!     for i in range(5):
//!         p = Process(target=foo, args=(i,))
//!         p.start()
//!     print("The end of list_1:", lis)
//! ```
//!
//! Rust has no mutable globals without synchronisation, so the list is a `Mutex<Vec<u32>>`
//! static. Under every start method each child appends to its own copy.
// expect: The end of list: []
// expect: This is Process 4 and lis is [4]

use std::sync::Mutex;

use multiproc::{Process, StartMethod, get_context};

static LIS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn foo(i: u32) {
    let mut lis = LIS.lock().unwrap();
    lis.push(i);
    println!("This is Process {i} and lis is {lis:?}");
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    // Fork copies the parent's memory, spawn and forkserver start fresh: same result.
    for method in [
        StartMethod::Fork,
        StartMethod::Forkserver,
        StartMethod::Spawn,
    ] {
        let mut children: Vec<Process> = Vec::new();
        for i in 0..5 {
            let mut p = get_context(method).process(foo, i);
            p.start()?;
            children.push(p);
        }
        for p in &children {
            assert_eq!(p.join()?, 0);
        }
    }
    let lis = LIS.lock().unwrap();
    println!("The end of list: {lis:?}");
    assert!(lis.is_empty());
    Ok(())
}
