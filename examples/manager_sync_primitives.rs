//! A manager `Lock` protecting a counter in a manager dict, incremented by four processes, and
//! a manager `Namespace` shared with them (Python's `Manager().Lock()`, `dict`, `Namespace`).
//!
//! ```python
//! from multiprocessing import Manager, Process
//!
//! def work(d, lock, ns):
//!     for _ in range(100):
//!         with lock:
//!             d['count'] += ns.step
//!
//! if __name__ == '__main__':
//!     with Manager() as manager:
//!         d = manager.dict(count=0)
//!         lock = manager.Lock()
//!         ns = manager.Namespace()
//!         ns.title = 'counter'
//!         ns.step = 1
//!         ps = [Process(target=work, args=(d, lock, ns)) for _ in range(4)]
//!         for p in ps: p.start()
//!         for p in ps: p.join()
//!         ns.total = d['count']
//!         print(d['count'])   # 400
//!         print(ns)           # Namespace(step=1, title='counter', total=400)
//! ```
//!
//! `d['count'] += 1` is two requests to the server (a read, then a write): without the lock two
//! processes could read the same value and an increment would be lost. `lock.lock()` is
//! Python's `with lock:` (the guard releases the lock when dropped). The namespace is printed
//! as Python prints one: its fields sorted by name.
// expect: 400
// expect: Namespace(step=1, title='counter', total=400)
// expect-lines: 2

use multiproc::{DictProxy, LockProxy, Manager, NamespaceProxy, Process};

fn work((d, lock, ns): (DictProxy<String, u64>, LockProxy, NamespaceProxy)) {
    let step: u64 = ns.get("step").unwrap();
    for _ in 0..100 {
        let _held = lock.lock().unwrap();
        let count = d.get_item("count").unwrap();
        d.set("count", &(count + step)).unwrap();
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let manager = Manager::start()?;
    let d = manager.dict_from([("count".to_string(), 0u64)])?;
    let lock = manager.lock()?;
    let ns = manager.namespace()?;
    ns.set("title", &"counter".to_string())?;
    ns.set("step", &1u64)?;

    let mut ps = Vec::new();
    for _ in 0..4 {
        let mut p = Process::new(work, (d.clone(), lock.clone(), ns.clone()));
        p.start()?;
        ps.push(p);
    }
    for p in &ps {
        assert_eq!(p.join()?, 0);
    }
    let count = d.get_item("count")?;
    ns.set("total", &count)?;
    println!("{count}");

    // Python's repr of a Namespace: `name=repr(value)`, sorted by name.
    let mut names = ns.names()?;
    names.sort();
    let fields: Vec<String> = names
        .iter()
        .map(|name| {
            let value = match name.as_str() {
                "title" => format!("'{}'", ns.get::<String>(name)?),
                _ => ns.get::<u64>(name)?.to_string(),
            };
            Ok(format!("{name}={value}"))
        })
        .collect::<multiproc::Result<_>>()?;
    println!("Namespace({})", fields.join(", "));
    manager.shutdown()?;
    Ok(())
}
