//! Choosing the start method (seed `002`: `set_start_method('spawn')` / `('fork')`, and seed
//! `000`'s `set_start_method("fork")`).
//!
//! ```python
//! import multiprocessing
//! multiprocessing.set_start_method('spawn')  # default on WinOS or MacOS
//! ...
//! ctx = multiprocessing.get_context('forkserver')
//! p = ctx.Process(target=func, args=(item,))
//! ```
//!
//! `set_start_method` fixes the method once for `Process::new`; `get_context(method)` gives a
//! context whose processes use that method whatever the global setting.
// expect: available: forkserver, spawn, fork
// expect: global method: spawn
// expect: ForkProcess-
// expect: ForkServerProcess-
// expect: second set_start_method: context has already been set

use multiproc::{Process, StartMethod, get_context};

fn report(_: ()) {
    let me = multiproc::current_process();
    println!("{} started by {:?}", me.name, me.start_method.unwrap());
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let all: Vec<String> = multiproc::get_all_start_methods()
        .iter()
        .map(ToString::to_string)
        .collect();
    println!("available: {}", all.join(", "));

    multiproc::set_start_method(StartMethod::Spawn)?;
    println!("global method: {}", multiproc::get_start_method());
    if let Err(e) = multiproc::set_start_method(StartMethod::Fork) {
        println!("second set_start_method: {e}");
    }
    let mut p = Process::new(report, ());
    p.start()?;
    p.join()?;

    for method in [StartMethod::Fork, StartMethod::Forkserver] {
        let mut p = get_context(method).process(report, ());
        p.start()?;
        assert_eq!(p.join()?, 0);
    }
    Ok(())
}
