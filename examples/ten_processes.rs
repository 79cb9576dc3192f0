//! Ten processes, each printing its id, all joined (seed `003`, "python多线程实现方法一").
//!
//! ```python
//! from multiprocessing import Process
//!
//! def runner(pool_id):
//!     print(f'pool_id: {pool_id}')
//!
//! if __name__ == '__main__':
//!     process_list = []
//!     for pool_id in range(10):
//!         p = Process(target=runner, args=(pool_id,))
//!         p.start()
//!         process_list.append(p)
//!     for p in process_list:
//!         p.join()
//! ```
// expect: pool_id: 0
// expect: pool_id: 9
// expect-lines: 10

use multiproc::Process;

fn runner(pool_id: u32) {
    println!("pool_id: {pool_id}");
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let mut process_list = Vec::new();
    for pool_id in 0..10 {
        let mut p = Process::new(runner, pool_id);
        p.start()?;
        process_list.push(p);
    }
    for p in &process_list {
        assert_eq!(p.join()?, 0);
    }
    Ok(())
}
