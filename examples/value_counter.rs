//! A shared counter incremented 1,000 times by each of four processes (seed `004`,
//! "共享内存（Value 和 Array）").
//!
//! ```python
//! import multiprocessing
//!
//! def increment(counter):
//!     for _ in range(1000):
//!         counter.value += 1
//!
//! if __name__ == "__main__":
//!     counter = multiprocessing.Value('i', 0)
//!     processes = [multiprocessing.Process(target=increment, args=(counter,)) for _ in range(4)]
//!     for process in processes:
//!         process.start()
//!     for process in processes:
//!         process.join()
//!     print(f"Counter value: {counter.value}")
//! ```
//!
//! Python's `counter.value += 1` reads under the lock, then writes under the lock: two
//! processes can read the same value and one increment is lost. Holding the lock across the
//! increment (`*counter.lock() += 1`, Python's `with counter.get_lock(): counter.value += 1`)
//! always gives 4000; the racy form is shown second and usually loses some.
// expect: Counter value: 4000
// expect: without holding the lock:

use multiproc::Process;
use multiproc::shm::Value;

fn increment(counter: Value<i32>) {
    for _ in 0..1000 {
        *counter.lock() += 1;
    }
}

fn increment_racy(counter: Value<i32>) {
    for _ in 0..1000 {
        let v = counter.get(); // lock taken and released
        counter.set(v + 1); // lock taken again: another process may have written meanwhile
    }
}

fn run(target: fn(Value<i32>)) -> multiproc::Result<i32> {
    let counter = Value::new(0)?;
    let processes: Vec<Process> = (0..4)
        .map(|_| Process::new(target, counter.clone()))
        .collect();
    let mut processes = processes;
    for p in &mut processes {
        p.start()?;
    }
    for p in &processes {
        assert_eq!(p.join()?, 0);
    }
    Ok(counter.get())
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let locked = run(increment)?;
    println!("Counter value: {locked}");
    assert_eq!(locked, 4000);
    let racy = run(increment_racy)?;
    println!(
        "without holding the lock: {racy} ({} updates lost)",
        4000 - racy
    );
    Ok(())
}
