//! A queue served over TCP with an authkey by one program, filled and emptied by two others
//! started separately (Python's documentation, "Using a remote manager").
//!
//! ```python
//! # the server
//! from multiprocessing.managers import BaseManager
//! from queue import Queue
//! queue = Queue()
//! class QueueManager(BaseManager): pass
//! QueueManager.register('get_queue', callable=lambda:queue)
//! m = QueueManager(address=('', 50000), authkey=b'abracadabra')
//! s = m.get_server()
//! s.serve_forever()
//!
//! # one client puts
//! from multiprocessing.managers import BaseManager
//! class QueueManager(BaseManager): pass
//! QueueManager.register('get_queue')
//! m = QueueManager(address=('foo.bar.org', 50000), authkey=b'abracadabra')
//! m.connect()
//! queue = m.get_queue()
//! queue.put('hello')
//!
//! # another client gets
//! from multiprocessing.managers import BaseManager
//! class QueueManager(BaseManager): pass
//! QueueManager.register('get_queue')
//! m = QueueManager(address=('foo.bar.org', 50000), authkey=b'abracadabra')
//! m.connect()
//! queue = m.get_queue()
//! queue.get()   # 'hello'
//! ```
//!
//! Run the three parts in three terminals:
//!
//! ```text
//! cargo run --example manager_remote_queue -- serve     # serving on 127.0.0.1:50000
//! cargo run --example manager_remote_queue -- put       # put 'hello' on the queue
//! cargo run --example manager_remote_queue -- get       # got 'hello' from the queue
//! cargo run --example manager_remote_queue -- stop      # the server shuts down
//! ```
//!
//! Each takes `--address HOST:PORT` (by default `127.0.0.1:50000`; serve on `0.0.0.0:50000`
//! for other machines, as Python's `('', 50000)`), and `put` an optional message.
//!
//! Where Python registers a `get_queue` callable on both sides, the server here publishes its
//! queue under a name (`Manager::publish`) and clients look it up (`Manager::get`), typed:
//! asking for a `QueueProxy<String>` of an object of other types is refused by the server.
//! Python's server runs until it is killed; this one also publishes an event that the `stop`
//! command sets, and shuts down cleanly when it is set.
//!
//! Run without arguments (as `cargo xtask demo manager_remote_queue` does), the program plays
//! the whole scenario with separate OS processes of its own executable: it starts `serve` on a
//! free port (read back from the server's first line), runs `put` and then `get` as two more
//! programs, shows that a client with the wrong authkey is refused, and runs `stop`; the server
//! must exit with status 0, and it is killed if anything fails before that.
// expect: server started
// expect: put 'hello' on the queue
// expect: got 'hello' from the queue
// expect: wrong authkey refused: authentication failed
// expect: server stopped
// expect: server exited: 0
// expect-lines: 6

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use multiproc::manager::Address;
use multiproc::{EventProxy, Manager, ManagerError, QueueProxy};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const AUTHKEY: &[u8] = b"abracadabra";
const DEFAULT_ADDRESS: &str = "127.0.0.1:50000";

/// Serves a queue (published as `"queue"`) until the `"stop"` event is set.
fn serve(address: Address) -> Res<()> {
    let mgr = Manager::builder()
        .address(address)
        .authkey(AUTHKEY)
        .serve()?;
    let queue = mgr.queue::<String>()?;
    mgr.publish("queue", &queue)?;
    let stop = mgr.event()?;
    mgr.publish("stop", &stop)?;
    // The first line tells a parent which port a `:0` address became.
    println!("serving on {}", mgr.address());
    stop.wait()?;
    mgr.shutdown()?;
    println!("server stopped");
    Ok(())
}

/// The connected manager and the queue it serves. The manager is kept while the queue is
/// used: dropping a connected manager also disables the proxies it handed out.
fn queue(address: Address) -> Res<(Manager, QueueProxy<String>)> {
    let mgr = Manager::connect(address, AUTHKEY)?;
    let queue = mgr.get::<QueueProxy<String>>("queue")?;
    Ok((mgr, queue))
}

fn put(address: Address, message: String) -> Res<()> {
    let (_mgr, queue) = queue(address)?;
    queue.put(&message)?;
    println!("put '{message}' on the queue");
    Ok(())
}

fn get(address: Address) -> Res<()> {
    let (_mgr, queue) = queue(address)?;
    let message = queue.get()?;
    println!("got '{message}' from the queue");
    Ok(())
}

fn stop(address: Address) -> Res<()> {
    let mgr = Manager::connect(address, AUTHKEY)?;
    mgr.get::<EventProxy>("stop")?.set()?;
    Ok(())
}

/// The server child: killed (and waited for) if the scenario fails before stopping it.
struct Server(Option<Child>);

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs this program with `args`, its output going to ours; fails unless it exits with 0.
fn run(args: &[&str]) -> Res<()> {
    let status = Command::new(std::env::current_exe()?)
        .args(args)
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("`{}` failed: {status}", args.join(" ")).into());
    }
    Ok(())
}

/// The whole scenario, each part a separate OS process.
fn demo() -> Res<()> {
    let exe = std::env::current_exe()?;
    let mut server = Server(Some(
        Command::new(exe)
            .args(["serve", "--address", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?,
    ));
    let child = server.0.as_mut().expect("just started");
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut first = String::new();
    out.read_line(&mut first)?;
    let address = first
        .trim()
        .strip_prefix("serving on ")
        .ok_or_else(|| format!("unexpected first line from the server: {first:?}"))?
        .to_string();
    println!("server started");

    run(&["put", "--address", &address])?;
    run(&["get", "--address", &address])?;

    match Manager::connect(address.parse::<Address>()?, b"not the key") {
        Err(e @ ManagerError::Connection(multiproc::ipc::Error::Authentication(_))) => {
            println!("wrong authkey refused: {e}");
        }
        Err(e) => return Err(format!("expected an authentication error, got {e}").into()),
        Ok(_) => return Err("a client with the wrong authkey was let in".into()),
    }

    run(&["stop", "--address", &address])?;
    let mut rest = String::new();
    out.read_to_string(&mut rest)?;
    print!("{rest}");
    let status = server.0.take().expect("still owned").wait()?;
    println!("server exited: {}", status.code().unwrap_or(-1));
    if !status.success() {
        return Err(format!("the server failed: {status}").into());
    }
    Ok(())
}

fn main() -> Res<()> {
    multiproc::init();
    let mut args = std::env::args().skip(1);
    let command = args.next();
    let mut address = DEFAULT_ADDRESS.to_string();
    let mut message = "hello".to_string();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--address" => address = args.next().ok_or("--address needs HOST:PORT")?,
            _ => message = arg,
        }
    }
    let address: Address = address.parse()?;
    match command.as_deref() {
        None => demo(),
        Some("serve") => serve(address),
        Some("put") => put(address, message),
        Some("get") => get(address),
        Some("stop") => stop(address),
        Some(other) => Err(format!(
            "unknown command {other:?}; usage: manager_remote_queue [serve|put [MESSAGE]|get|stop] [--address HOST:PORT]"
        )
        .into()),
    }
}
