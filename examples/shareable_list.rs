//! A `ShareableList` made by the parent and changed by a child that attaches it by name: an
//! int becomes a float, a str gets shorter, `None` becomes an int (Python's
//! `shared_memory.ShareableList` documentation example, with a child process).
//!
//! ```python
//! from multiprocessing import Process, shared_memory
//!
//! def change(name):
//!     sl = shared_memory.ShareableList(name=name)
//!     sl[0] = 2.5         # an int slot takes a float
//!     sl[2] = "hi"        # a shorter str
//!     sl[4] = 42          # None becomes an int
//!     sl.shm.close()
//!
//! if __name__ == '__main__':
//!     sl = shared_memory.ShareableList([1, 2.5, "howdy", b"xy", None, True])
//!     print(sl.format)    # qd8s8sxxxxxx?xxxxxxxx?
//!     p = Process(target=change, args=(sl.shm.name,))
//!     p.start()
//!     p.join()
//!     print(list(sl))     # [2.5, 2.5, 'hi', b'xy', 42, True]
//!     print(sl.format)    # dd8s8sqxxxxxxx?
//!     sl.shm.close()
//!     sl.shm.unlink()
//! ```
//!
//! The layout is Python's: while the parent waits, `ShareableList(name=...)` in a Python
//! process attaches the same list. Run with `cargo xtask demo shareable_list`.
// expect: format before: qd8s8sxxxxxx?xxxxxxxx?
// expect: items after: [2.5, 2.5, 'hi', b'xy', 42, True]
// expect: format after: dd8s8sqxxxxxxx?
// expect: child could not store "a str longer than its slot": bytes/str item exceeds available storage
// expect-lines: 4

use multiproc::Process;
use multiproc::shm::{Item, ShareableList};

fn change(name: String) {
    let sl = ShareableList::attach(&name).expect("the parent created it");
    sl.set(0, 2.5).expect("an int slot takes a float");
    sl.set(2, "hi").expect("a shorter str fits");
    sl.set(4, 42).expect("None becomes an int");
    let too_long = "a str longer than its slot";
    if let Err(e) = sl.set(2, too_long) {
        println!("child could not store {too_long:?}: {e}");
    }
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let sl = ShareableList::new([
        Item::Int(1),
        Item::Float(2.5),
        "howdy".into(),
        b"xy".into(),
        Item::None,
        Item::Bool(true),
    ])?;
    println!("format before: {}", sl.format()?);
    let mut p = Process::new(change, sl.name().to_string());
    p.start()?;
    assert_eq!(p.join()?, 0);
    let items: Vec<String> = sl.to_vec()?.iter().map(Item::to_string).collect();
    println!("items after: [{}]", items.join(", "));
    println!("format after: {}", sl.format()?);
    sl.unlink()?;
    Ok(())
}
