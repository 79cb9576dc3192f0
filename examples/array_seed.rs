//! Ten processes each raise the first element of a shared `Array` of `i32` by 100 (seed `001`,
//! "进程间的数据共享" with `Array`).
//!
//! ```python
//! from multiprocessing import Process, Array
//!
//! def func(i, temp):
//!     temp[0] += 100
//!     print("进程%s " % i, ' 修改数组第一个元素后----->', temp[0])
//!
//! if __name__ == '__main__':
//!     temp = Array('i', [1, 2, 3, 4])
//!     for i in range(10):
//!         p = Process(target=func, args=(i, temp))
//!         p.start()
//! ```
//!
//! In Python `temp[0] += 100` takes the array's lock twice (to read, then to write); here the
//! guard holds it across the read-modify-write, so no raise is lost.
// expect: final: [1001, 2, 3, 4]
// expect-lines: 11

use multiproc::{Array, Process};

fn func((i, temp): (u32, Array<i32>)) {
    let mut a = temp.lock();
    a[0] += 100;
    println!("process {i}: first element after the raise -----> {}", a[0]);
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let temp = Array::from_slice(&[1, 2, 3, 4])?;
    let mut children = Vec::new();
    for i in 0..10 {
        let mut p = Process::new(func, (i, temp.clone()));
        p.start()?;
        children.push(p);
    }
    for p in &children {
        assert_eq!(p.join()?, 0);
    }
    println!("final: {:?}", temp.to_vec());
    assert_eq!(temp.to_vec(), [1001, 2, 3, 4]);
    Ok(())
}
