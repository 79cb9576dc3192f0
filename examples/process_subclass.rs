//! Python's "subclass of Process with `run()`" becomes a struct with a `run(self)` method,
//! started ten times (seed `003`, "python多线程实现方法二-继承").
//!
//! ```python
//! from multiprocessing import Process
//!
//! class MyProcess(Process):
//!     def __init__(self, name):
//!         super(MyProcess, self).__init__()
//!         self.name = name
//!
//!     def run(self):
//!         print("test process", self.name)
//!
//! if __name__ == '__main__':
//!     process_list = []
//!     for i in range(10):
//!         p = MyProcess(str(i))
//!         p.start()
//!         process_list.append(p)
//!     for p in process_list:
//!         p.join()
//! ```
// expect: test process 0
// expect: test process 9
// expect-lines: 10

use multiproc::Process;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct MyProcess {
    name: String,
}

impl MyProcess {
    fn run(self) {
        println!("test process {}", self.name);
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let mut process_list = Vec::new();
    for i in 0..10 {
        let job = MyProcess {
            name: i.to_string(),
        };
        let mut p = Process::new(MyProcess::run, job);
        p.set_name(i.to_string()); // Python's `self.name = name` names the process too
        p.start()?;
        process_list.push(p);
    }
    for p in &process_list {
        assert_eq!(p.join()?, 0);
    }
    Ok(())
}
