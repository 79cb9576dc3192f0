//! A user type served by a manager and called through its proxy, from the parent and from
//! child processes (Python's documentation, "Customized managers").
//!
//! ```python
//! from multiprocessing.managers import BaseManager
//!
//! class MathsClass:
//!     def add(self, x, y):
//!         return x + y
//!     def mul(self, x, y):
//!         return x * y
//!
//! class MyManager(BaseManager):
//!     pass
//!
//! MyManager.register('Maths', MathsClass)
//!
//! if __name__ == '__main__':
//!     with MyManager() as manager:
//!         maths = manager.Maths()
//!         print(maths.add(4, 3))         # prints 7
//!         print(maths.mul(7, 8))         # prints 56
//! ```
//!
//! `managed!` is `register`: it writes the typed proxy `MathsProxy`, with one method for each
//! method listed, and `register::<Maths>()` tells the manager's server about the type. Beyond
//! the snippet, the object counts the calls it serves, four children call it at once (each
//! call runs in the server, on the one object, under its lock), and a method that is not listed
//! (Python's `exposed=`) cannot be called: the proxy has no such method (a compile error), and
//! the server refuses the name even when asked for it directly, through the untyped
//! `__method`, the counterpart of Python's `_callmethod`, as Python's server refuses a method
//! that is not in `exposed`.
// expect: 7
// expect: 56
// expect: 4 children made 40 calls; the server counted 42
// expect: reset refused: not exposed: method "reset"
// expect: copy of the object: Maths { calls: 42 }
// expect-lines: 5

use multiproc::manager::{Proxy, RemoteErrorKind};
use multiproc::{Manager, Process};
use serde::{Deserialize, Serialize};

/// Python's `MathsClass`, counting the calls it serves.
#[derive(Debug, Serialize, Deserialize)]
pub struct Maths {
    calls: u64,
}

impl Maths {
    fn add(&mut self, x: i64, y: i64) -> i64 {
        self.calls += 1;
        x + y
    }

    fn mul(&mut self, x: i64, y: i64) -> i64 {
        self.calls += 1;
        x * y
    }

    fn calls(&self) -> u64 {
        self.calls
    }

    /// Not listed in `managed!`: no process can call it through a proxy.
    #[allow(dead_code)]
    fn reset(&mut self) {
        self.calls = 0;
    }
}

multiproc::managed! {
    /// A `Maths` held by a manager (Python's `manager.Maths()`).
    pub proxy MathsProxy for Maths {
        fn add(x: i64, y: i64) -> i64;
        fn mul(x: i64, y: i64) -> i64;
        fn calls() -> u64;
    }
}

fn child((maths, i): (MathsProxy, i64)) {
    for j in 0..5 {
        assert_eq!(maths.add(i, j).unwrap(), i + j);
        assert_eq!(maths.mul(i, j).unwrap(), i * j);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    multiproc::init();
    let manager = Manager::builder().register::<Maths>()?.start()?;
    let maths: MathsProxy = manager.create(Maths { calls: 0 })?;
    println!("{}", maths.add(4, 3)?);
    println!("{}", maths.mul(7, 8)?);

    let children: Vec<Process> = (0..4)
        .map(|i| {
            let mut p = Process::new(child, (maths.clone(), i));
            p.start().map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    for p in &children {
        assert_eq!(p.join()?, 0);
    }
    println!(
        "4 children made {} calls; the server counted {}",
        4 * 5 * 2,
        maths.calls()?
    );

    // `maths.reset()` does not compile; asked by name, the server refuses.
    let e = maths
        .object()
        .__method::<_, ()>("reset", &())
        .expect_err("reset is not exposed");
    assert_eq!(e.remote_kind(), Some(RemoteErrorKind::NotExposed));
    println!("reset refused: {e}");

    // Python's `_getvalue()`: a copy of the object, made from what the server holds.
    println!("copy of the object: {:?}", maths.get_value()?);
    manager.shutdown()?;
    Ok(())
}
