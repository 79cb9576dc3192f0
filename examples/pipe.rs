//! A duplex pipe between parent and child (seed `002`, "Pipe").
//!
//! ```python
//! from multiprocessing import Process, Pipe
//!
//! def f(conn):
//!     conn.send([42, None, 'hello'])
//!     conn.close()
//!
//! parent_conn, child_conn = Pipe()
//! p = Process(target = f, args = (child_conn,))
//! p.start()
//! print(parent_conn.recv())
//! p.join()
//! ```
//!
//! Python's list `[42, None, 'hello']` mixes types; in Rust the message is a tuple (any serde
//! type works). The pipe is duplex: the parent answers and the child reads it.
// expect: (42, None, "hello")
// expect: child got: thanks

use multiproc::{Connection, Process, pipe};

fn f(mut conn: Connection) {
    conn.send(&(42, None::<i32>, "hello")).unwrap();
    let reply: String = conn.recv().unwrap();
    println!("child got: {reply}");
    conn.close();
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let (mut parent_conn, child_conn) = pipe()?;
    let mut p = Process::new(f, child_conn);
    p.start()?;
    let msg: (i32, Option<i32>, String) = parent_conn.recv()?;
    println!("{msg:?}");
    parent_conn.send(&"thanks")?;
    assert_eq!(p.join()?, 0);
    // The child closed its end and exited: the parent now sees end of file, not a hang.
    assert!(matches!(
        parent_conn.recv_bytes(),
        Err(multiproc::ipc::Error::Eof)
    ));
    Ok(())
}
