//! A producer of 0..4, then a consumer draining the queue until it is empty (seed `004`,
//! "队列（Queue）").
//!
//! ```python
//! import multiprocessing
//!
//! def producer(queue):
//!     for item in range(5):
//!         queue.put(item)
//!         print(f"Produced {item}")
//!
//! def consumer(queue):
//!     while not queue.empty():
//!         item = queue.get()
//!         print(f"Consumed {item}")
//!
//! if __name__ == "__main__":
//!     queue = multiprocessing.Queue()
//!     producer_process = multiprocessing.Process(target=producer, args=(queue,))
//!     consumer_process = multiprocessing.Process(target=consumer, args=(queue,))
//!     producer_process.start()
//!     producer_process.join()
//!     consumer_process.start()
//!     consumer_process.join()
//! ```
//!
//! `empty()` is reliable here because the producer has been joined before the consumer starts:
//! its items are all in the queue.
// expect: Produced 0
// expect: Produced 4
// expect: Consumed 0
// expect: Consumed 4
// expect-lines: 10

use multiproc::{Process, Queue};

fn producer(queue: Queue<u32>) {
    for item in 0..5 {
        queue.put(item).unwrap();
        println!("Produced {item}");
    }
}

fn consumer(queue: Queue<u32>) {
    while !queue.empty() {
        let item = queue.get().unwrap();
        println!("Consumed {item}");
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let queue = Queue::new()?;
    let mut producer_process = Process::new(producer, queue.clone());
    let mut consumer_process = Process::new(consumer, queue.clone());
    producer_process.start()?;
    assert_eq!(producer_process.join()?, 0);
    consumer_process.start()?;
    assert_eq!(consumer_process.join()?, 0);
    Ok(())
}
