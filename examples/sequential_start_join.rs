//! Four processes, each started and joined before the next (seed `002`, "Process进程").
//!
//! ```python
//! import multiprocessing
//! from multiprocessing import Process
//! import time
//!
//! def func(message):
//!     time.sleep(1)
//!     print('PID-{}: '.format(multiprocessing.current_process().pid), message)
//!
//! if __name__ == '__main__':
//!     for item in ['A', 'B', 'C', 'D']:
//!         p = Process(target=func, args=(item,))
//!         p.start()
//!         p.join()          # 阻塞等待
//! ```
//!
//! The sleep is shortened to 100 ms. Because each `join` waits, the letters come out in order.
// expect-lines: 4
// expect: : A

use std::time::Duration;

use multiproc::Process;

fn func(message: String) {
    std::thread::sleep(Duration::from_millis(100));
    println!("PID-{}: {message}", multiproc::current_process().pid);
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let mut pids = Vec::new();
    for item in ["A", "B", "C", "D"] {
        let mut p = Process::new(func, item.to_string());
        p.start()?;
        assert_eq!(p.join()?, 0);
        pids.push(p.pid());
    }
    pids.dedup();
    assert_eq!(pids.len(), 4, "four different processes");
    Ok(())
}
