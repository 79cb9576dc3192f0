//! Each child prints its name, its module, its parent's pid and its own pid (seed `001`).
//!
//! ```python
//! import os
//! import multiprocessing
//!
//! def foo(i):
//!     print("这里是:", multiprocessing.current_process().name)
//!     print("模块的名称:", __name__)
//!     print("父进程id:", os.getppid())
//!     print("当前子进程id:", os.getpid())
//!     print("-----------------------------------------")
//!
//! if __name__ == '__main__':
//!     for i in range(5):
//!         p = multiprocessing.Process(target=foo, args=(i,))
//!         p.start()
//! ```
//!
//! Python's `__name__` is `__main__` in a fork child and `__mp_main__` under spawn; the Rust
//! counterpart of the module name is `module_path!()`. Each child prints its block in one write
//! so the lines of different children do not interleave. The parent pid is the logical parent
//! (`parent_process()`), also under the forkserver method where the OS parent is the server.
// expect: name: Process-1
// expect: name: Process-5
// expect: module: process_identity
// expect-lines: 25

use std::io::Write;

fn foo((i, main_pid): (u32, u32)) {
    let me = multiproc::current_process();
    let parent = multiproc::parent_process().expect("a child has a parent");
    let block = format!(
        "name: {}\nmodule: {}\nparent pid: {}\nown pid: {} (i = {i})\n-----------------------------------------\n",
        me.name,
        module_path!(),
        parent.pid(),
        me.pid,
    );
    std::io::stdout()
        .lock()
        .write_all(block.as_bytes())
        .unwrap();
    assert_eq!(parent.pid(), main_pid);
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let mut children = Vec::new();
    for i in 0..5 {
        let mut p = multiproc::Process::new(foo, (i, std::process::id()));
        p.start()?;
        children.push(p);
    }
    // Python's snippet relies on the interpreter joining non-daemon children at exit; so does
    // multiproc, but joining explicitly lets us check the exit codes.
    for p in &children {
        assert_eq!(p.join()?, 0);
    }
    Ok(())
}
