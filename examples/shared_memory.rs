//! A named shared memory block "shm" of 4096 bytes, filled by a child with 1..5 and read by the
//! parent (seed `002`, "共享内存").
//!
//! ```python
//! from multiprocessing import Process, shared_memory
//!
//! def func(args):
//!     shm = shared_memory.SharedMemory(name='shm')
//!     buf = shm.buf
//!     buf[:len(args)] = bytearray(args)
//!
//! if __name__ == '__main__':
//!     shm = shared_memory.SharedMemory(name='shm', create=True, size=4096)
//!     p = Process(target=func, args=([1,2,3,4,5],))
//!     p.start()
//!     p.join()
//!     for item in shm.buf[:10]:
//!         print(item, end=' ')     # 1 2 3 4 5 0 0 0 0 0
//!     shm.close()
//!     shm.unlink()
//! ```
//!
//! The name is Python's: while the parent waits, `SharedMemory(name='shm')` in a Python
//! process attaches the same bytes.
// expect: 1 2 3 4 5 0 0 0 0 0

use multiproc::Process;
use multiproc::shm::SharedMemory;

fn func(args: Vec<u8>) {
    let shm = SharedMemory::attach("shm").expect("the parent created it");
    shm.write(0, &args).expect("fits");
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let mut shm = match SharedMemory::create(Some("shm"), 4096) {
        Err(multiproc::shm::Error::Exists(_)) => {
            // Left over by a run that was killed before its tracker could clean up.
            SharedMemory::attach("shm")?.unlink()?;
            SharedMemory::create(Some("shm"), 4096)?
        }
        other => other?,
    };
    let mut p = Process::new(func, vec![1, 2, 3, 4, 5]);
    p.start()?;
    assert_eq!(p.join()?, 0);
    let mut first = [0u8; 10];
    shm.read(0, &mut first)?;
    let text: Vec<String> = first.iter().map(u8::to_string).collect();
    println!("{}", text.join(" "));
    shm.close();
    shm.unlink()?;
    Ok(())
}
