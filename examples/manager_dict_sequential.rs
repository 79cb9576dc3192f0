//! A manager dict shared by ten processes, each started and joined before the next: each sets
//! `dic["num"]` and prints the dict's items (seed `001`, "1.2 使用Manager共享数据").
//!
//! ```python
//! from multiprocessing import Process
//! from multiprocessing import Manager
//!
//! def func(i, dic):
//!     dic["num"] = 100+i
//!     print(dic.items())
//!
//! if __name__ == '__main__':
//!     dic = Manager().dict()
//!     for i in range(10):
//!         p = Process(target=func, args=(i, dic))
//!         p.start()
//!         p.join()
//! ```
//!
//! `Manager::start()` starts the server process that holds the dict; the `DictProxy` is an
//! ordinary `Process` argument, and every child talks to the same server, so each one
//! overwrites the value the one before it wrote. The items are printed as Python prints
//! them: `[('num', 100)]`. Because each `join` waits, the lines come out in order.
// expect: [('num', 100)]
// expect: [('num', 105)]
// expect: [('num', 109)]
// expect: parent sees: [('num', 109)]
// expect-lines: 11

use multiproc::{DictProxy, Manager, Process};

/// A `str` as Python's `repr` writes it (single quotes unless the text holds one).
fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `dic.items()` printed the way Python prints a list of `(str, int)` tuples.
fn py_items(items: &[(String, i64)]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|(k, v)| format!("({}, {v})", py_str(k)))
        .collect();
    format!("[{}]", items.join(", "))
}

fn func((i, dic): (i64, DictProxy<String, i64>)) {
    dic.set("num", &(100 + i)).unwrap();
    println!("{}", py_items(&dic.items().unwrap()));
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let mgr = Manager::start()?;
    let dic = mgr.dict::<String, i64>()?;
    for i in 0..10 {
        let mut p = Process::new(func, (i, dic.clone()));
        p.start()?;
        assert_eq!(p.join()?, 0);
    }
    // Not in Python's snippet: the parent's proxy sees the last child's write.
    println!("parent sees: {}", py_items(&dic.items()?));
    mgr.shutdown()?;
    Ok(())
}
