//! Interoperability of `ShareableList` with Python's `multiprocessing.shared_memory.ShareableList`,
//! both ways: Python attaches a list Rust made, and Rust attaches a list Python made; each
//! side checks the other's items and format string and changes items the other then reads.
//!
//! `python3` runs as a child through `std::process::Command`; every wait on it has the
//! [`LONG`] deadline, and a failed test kills and reaps it. Skipped (reported as ignored),
//! with a note, when `python3` cannot be started, except under CI (`CI` set to `true` or `1`,
//! as CI services and `.ci/run` set it), where a missing `python3` fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;

use multiproc_shm::{Error, Item, ShareableList};
use multiproc_testkit::{Failed, LONG, Trial, check};

fn main() {
    let ignored = match Command::new("python3").arg("--version").output() {
        Ok(_) => false,
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "python3 cannot be started ({e}), and CI is set: the interop tests must run"
            );
            eprintln!("note: python3 cannot be started ({e}); skipping the interop tests");
            true
        }
    };
    let trials = vec![
        Trial::test(
            "python_attaches_a_rust_shareable_list",
            python_attaches_a_rust_shareable_list,
        ),
        Trial::test(
            "rust_attaches_a_python_shareable_list",
            rust_attaches_a_python_shareable_list,
        ),
    ];
    multiproc_testkit::run(
        trials
            .into_iter()
            .map(|t| t.with_ignored_flag(ignored))
            .collect(),
    );
}

/// A `python3 -c SCRIPT ARGS…` child: its stdout lines and its whole stderr come through
/// channels (reader threads), so every wait has a deadline. Killed and reaped on drop.
struct Python {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Python {
    fn start(script: &str, args: &[&str]) -> Result<Python, Failed> {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut stderr = child.stderr.take().ok_or("no stderr")?;
        let (line_tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (err_tx, stderr_rx) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = err_tx.send(text);
        });
        Ok(Python {
            child,
            lines,
            stderr: stderr_rx,
        })
    }

    /// The next line Python prints.
    fn line(&self) -> Result<String, Failed> {
        self.lines
            .recv_timeout(LONG)
            .map_err(|e| format!("no line from python ({e}): {}", self.stderr_now()).into())
    }

    /// Python's stderr, if it has already ended (for error messages).
    fn stderr_now(&self) -> String {
        self.stderr.try_recv().unwrap_or_default()
    }

    /// Writes a line to Python's stdin.
    fn say(&mut self, text: &str) -> Result<(), Failed> {
        let stdin = self.child.stdin.as_mut().ok_or("stdin closed")?;
        stdin.write_all(format!("{text}\n").as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes stdin and waits (deadline [`LONG`]) for Python to exit and its stderr to end
    /// (which includes its resource tracker, which shares it).
    fn finish(mut self) -> Result<(ExitStatus, String), Failed> {
        drop(self.child.stdin.take());
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).ok_or("no pid")?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        let mut fds = [rustix::event::PollFd::new(
            &pidfd,
            rustix::event::PollFlags::IN,
        )];
        let deadline = rustix::event::Timespec::try_from(LONG)?;
        check!(
            rustix::event::poll(&mut fds, Some(&deadline))? == 1,
            "python did not exit within {LONG:?}"
        );
        let status = self.child.wait()?;
        let stderr = self
            .stderr
            .recv_timeout(LONG)
            .map_err(|e| format!("python's stderr did not end: {e}"))?;
        Ok((status, stderr))
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        // After `finish` the child is reaped, and `kill` does nothing.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Python attaches with `ShareableList(name=...)` (and unregisters the block from its resource
/// tracker: Python before 3.13 registers attachments too, and would unlink our block at exit),
/// checks every value, its type and `format`, changes items; we read its changes.
const PY_ATTACHES: &str = r#"
import sys
from multiprocessing import shared_memory, resource_tracker
sl = shared_memory.ShareableList(name=sys.argv[1])
resource_tracker.unregister(sl.shm._name, "shared_memory")
expected = [42, -7, 2.5, True, False, None, "hello wörld", b"by\x00tes", 2**63 - 1, 1e300]
got = list(sl)
assert got == expected, got
assert [type(v) for v in got] == [type(v) for v in expected], got
assert len(sl) == 10
assert sl.format == "qqdxxxxxxx?xxxxxxx?xxxxxx?x16s8sqd", sl.format
assert sl.count(42) == 1 and sl.index(None) == 5
sl[0] = 0.125          # int -> float
sl[1] = "8 chars!"     # int -> str, exactly its 8 bytes
sl[3] = None           # bool -> None
sl[5] = 12345          # None -> int
sl[6] = "hi"           # a shorter str
sl[7] = b"py"
sl[9] = False          # float -> bool
try:
    sl[6] = "x" * 17
except ValueError as e:
    assert str(e) == "bytes/str item exceeds available storage", e
else:
    raise AssertionError("a 17-byte str fitted a 16-byte slot")
print(sl.format, flush=True)
sl.shm.close()
"#;

fn python_attaches_a_rust_shareable_list() -> Result<(), Failed> {
    let sl = ShareableList::new([
        Item::Int(42),
        Item::Int(-7),
        Item::Float(2.5),
        Item::Bool(true),
        Item::Bool(false),
        Item::None,
        "hello wörld".into(),
        b"by\x00tes".into(),
        Item::Int(i64::MAX),
        Item::Float(1e300),
    ])?;
    let python = Python::start(PY_ATTACHES, &[sl.name()])?;
    let format = python.line()?;
    let (status, stderr) = python.finish()?;
    check!(status.success(), "python failed ({status}): {stderr}");
    check!(stderr.is_empty(), "python wrote to stderr: {stderr}");
    let want_format = "d8sdxxxxxx?xxxxxxxx?q16s8sqxxxxxxx?";
    check!(format == want_format, "python's format {format}");
    check!(sl.format()? == want_format, "our format {}", sl.format()?);
    let got = sl.to_vec()?;
    let want = [
        Item::Float(0.125),
        "8 chars!".into(),
        Item::Float(2.5),
        Item::None,
        Item::Bool(false),
        Item::Int(12345),
        "hi".into(),
        b"py".into(),
        Item::Int(i64::MAX),
        Item::Bool(false),
    ];
    check!(got == want, "after python: {got:?}");
    let name = sl.name().to_string();
    sl.unlink()?;
    check!(
        !Path::new(&format!("/dev/shm/{name}")).exists(),
        "{name} left in /dev/shm"
    );
    Ok(())
}

/// Python creates a list, prints its name and waits; we attach, check and write; Python
/// checks what we wrote, unlinks and says "ok".
const PY_CREATES: &str = r#"
import sys
from multiprocessing import shared_memory
sl = shared_memory.ShareableList([1, 2.5, "ab", b"xy", None, True, "sixteen chars!!!", -3])
print(sl.shm.name, flush=True)
sys.stdin.readline()
expected = [2.75, 2.5, "é", b"xy", 10, None, b"bytes now", True]
got = list(sl)
assert got == expected, got
assert [type(v) for v in got] == [type(v) for v in expected], got
assert sl.format == "dd8s8sqxxxxxx?x24sxxxxxxx?", sl.format
sl.shm.close()
sl.shm.unlink()
print("ok", flush=True)
"#;

fn rust_attaches_a_python_shareable_list() -> Result<(), Failed> {
    let mut python = Python::start(PY_CREATES, &[])?;
    let name = python.line()?;
    let sl = ShareableList::attach(&name)?;
    let want = [
        Item::Int(1),
        Item::Float(2.5),
        "ab".into(),
        b"xy".into(),
        Item::None,
        Item::Bool(true),
        "sixteen chars!!!".into(),
        Item::Int(-3),
    ];
    let got = sl.to_vec()?;
    check!(got == want, "python's items {got:?}");
    check!(
        sl.format()? == "qd8s8sxxxxxx?xxxxxxxx?24sq",
        "python's format {}",
        sl.format()?
    );
    check!(
        sl.index(&Item::Bool(true))? == 0,
        "index(True) is 0 as 1 == True"
    );
    sl.set(0, 2.75)?; // int -> float
    sl.set(2, "é")?; // a shorter str
    check!(
        matches!(
            sl.set(2, "123456789"),
            Err(Error::ExceedsStorage {
                index: 2,
                len: 9,
                available: 8
            })
        ),
        "a too-long str was accepted"
    );
    sl.set(4, 10)?; // None -> int
    sl.set(5, Item::None)?; // bool -> None
    sl.set(6, b"bytes now")?; // str -> bytes
    sl.set(7, true)?; // int -> bool
    python.say("go")?;
    let done = python.line()?;
    let (status, stderr) = python.finish()?;
    check!(
        status.success() && done == "ok",
        "python said {done:?} ({status}): {stderr}"
    );
    check!(stderr.is_empty(), "python wrote to stderr: {stderr}");
    check!(
        !Path::new(&format!("/dev/shm/{name}")).exists(),
        "{name} left in /dev/shm"
    );
    Ok(())
}
