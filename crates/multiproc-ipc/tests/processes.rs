//! Connections handed to child processes, under every start method.
//!
//! `harness = false`: one test thread, trials on the main thread, so fork is allowed.

use std::time::Duration;

use multiproc_core::{StartMethod, get_context};
use multiproc_ipc::{Connection, Error, pipe};
use multiproc_testkit::{Failed, LONG, TestFn, check, join, start};

fn main() {
    let tests: &[(&str, TestFn)] = &[
        ("duplex_both_ways", duplex_both_ways),
        ("simplex_to_child_and_back", simplex_to_child_and_back),
        ("large_messages_cross", large_messages_cross),
        ("eof_when_child_exits", eof_when_child_exits),
        ("eof_when_child_is_killed", eof_when_child_is_killed),
        (
            "read_ahead_bytes_travel_with_the_handle",
            read_ahead_bytes_travel_with_the_handle,
        ),
        ("seed_pipe_snippet", seed_pipe_snippet),
    ];
    let trials = multiproc_testkit::trials(tests);
    multiproc_testkit::run(trials);
}

/// Receives with a deadline (poll first), so a broken test fails instead of hanging.
fn recv<T: serde::de::DeserializeOwned>(c: &mut Connection) -> Result<T, Failed> {
    check!(c.poll(Some(LONG))?, "nothing received within {LONG:?}");
    Ok(c.recv()?)
}

/// Echoes every message, adding one to each number, until the parent sends 0.
fn adder(mut conn: Connection) {
    loop {
        let n: u64 = conn.recv().unwrap();
        conn.send(&(n + 1)).unwrap();
        if n == 0 {
            break;
        }
    }
}

fn duplex_both_ways(m: StartMethod) -> Result<(), Failed> {
    let (mut mine, theirs) = pipe(true)?;
    let p = start(m, adder, theirs)?;
    for n in [41u64, 1, 99, 0] {
        mine.send(&n)?;
        let back: u64 = recv(&mut mine)?;
        check!(back == n + 1, "sent {n}, got {back}");
    }
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

/// Reads words from `rx`, writes them reversed on `tx`.
/// Stops at EOF, or at the word "stop" (under fork the child inherits the parent's write end
/// too, as in Python, so it would never see EOF).
fn reverser((mut rx, mut tx): (Connection, Connection)) {
    while let Ok(word) = rx.recv::<String>() {
        if word == "stop" {
            break;
        }
        tx.send(&word.chars().rev().collect::<String>()).unwrap();
    }
}

fn simplex_to_child_and_back(m: StartMethod) -> Result<(), Failed> {
    let (child_rx, mut tx) = pipe(false)?;
    let (mut rx, child_tx) = pipe(false)?;
    check!(
        child_rx.readable() && !child_rx.writable() && tx.writable() && !tx.readable(),
        "simplex ends"
    );
    let p = start(m, reverser, (child_rx, child_tx))?;
    for w in ["hello", "", "multiproc"] {
        tx.send(&w)?;
        let back: String = recv(&mut rx)?;
        check!(
            back == w.chars().rev().collect::<String>(),
            "{w} came back as {back}"
        );
    }
    if m == StartMethod::Fork {
        tx.send(&"stop")?;
    }
    drop(tx); // under spawn and forkserver the child's recv sees EOF and it exits
    check!(join(&p)? == 0, "child failed");
    check!(
        matches!(rx.recv_bytes(), Err(Error::Eof)),
        "no EOF after the child ended"
    );
    Ok(())
}

/// Sends back the length and a checksum of each message, then one message of the given size.
fn big_echo((mut conn, size): (Connection, usize)) {
    let msg = conn.recv_bytes().unwrap();
    let sum: u64 = msg.iter().map(|&b| u64::from(b)).sum();
    conn.send(&(msg.len(), sum)).unwrap();
    let out: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    conn.send_bytes(&out).unwrap();
}

fn large_messages_cross(m: StartMethod) -> Result<(), Failed> {
    let size = 16 << 20;
    let (mut mine, theirs) = pipe(true)?;
    let p = start(m, big_echo, (theirs, size))?;
    let out: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    mine.send_bytes(&out)?;
    let (len, sum): (usize, u64) = recv(&mut mine)?;
    check!(len == size, "child got {len} bytes");
    check!(
        sum == out.iter().map(|&b| u64::from(b)).sum::<u64>(),
        "checksum"
    );
    check!(mine.poll(Some(LONG))?, "no big message");
    let back = mine.recv_bytes()?;
    check!(
        back.len() == size && back.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "big message corrupt"
    );
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

fn eof_when_child_exits(m: StartMethod) -> Result<(), Failed> {
    let (mut mine, theirs) = pipe(true)?;
    let p = start(m, |c: Connection| drop(c), theirs)?;
    check!(
        mine.poll(Some(LONG))?,
        "poll did not wake when the child's end closed"
    );
    check!(matches!(mine.recv_bytes(), Err(Error::Eof)), "expected Eof");
    check!(join(&p)? == 0, "child failed");
    check!(
        matches!(mine.send_bytes(b"x"), Err(Error::BrokenPipe)),
        "expected BrokenPipe writing to a dead peer"
    );
    Ok(())
}

fn hold_and_sleep(mut conn: Connection) {
    conn.send(&"ready").unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

fn eof_when_child_is_killed(m: StartMethod) -> Result<(), Failed> {
    let (mut mine, theirs) = pipe(true)?;
    // A daemon, so that a failed check cannot leave it for the exit handler to wait on.
    let mut p = get_context(m).process(hold_and_sleep, theirs);
    p.set_daemon(true)?;
    p.start()?;
    let ready: String = recv(&mut mine)?;
    check!(ready == "ready", "child said {ready}");
    check!(
        !mine.poll(Some(Duration::from_millis(50)))?,
        "spurious data"
    );
    p.kill()?;
    check!(
        mine.poll(Some(LONG))?,
        "poll did not wake when the child was killed"
    );
    check!(
        matches!(mine.recv_bytes(), Err(Error::Eof)),
        "expected Eof after kill"
    );
    check!(join(&p)? == -9, "exit code");
    Ok(())
}

/// Receives the three messages the parent queued before handing the connection over.
fn read_three(mut conn: Connection) {
    let got: Vec<u32> = (0..3).map(|_| conn.recv().unwrap()).collect();
    assert_eq!(got, [1, 2, 3]);
    conn.send(&"got all three").unwrap();
}

fn read_ahead_bytes_travel_with_the_handle(m: StartMethod) -> Result<(), Failed> {
    // `b` reads ahead: after one recv, messages 1..=3 sit in its buffer; handing it to a
    // child must carry them along.
    let (mut a, mut b) = pipe(true)?;
    for n in 0u32..=3 {
        a.send(&n)?;
    }
    let first: u32 = recv(&mut b)?;
    check!(first == 0, "first message {first}");
    let p = start(m, read_three, b)?;
    let reply: String = recv(&mut a)?;
    check!(reply == "got all three", "child said {reply}");
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

fn seed_f(mut conn: Connection) {
    conn.send(&(42, None::<i32>, "hello")).unwrap();
    conn.close();
}

fn seed_pipe_snippet(m: StartMethod) -> Result<(), Failed> {
    let (mut parent_conn, child_conn) = pipe(true)?;
    let p = start(m, seed_f, child_conn)?;
    let got: (i32, Option<i32>, String) = recv(&mut parent_conn)?;
    check!(got == (42, None, "hello".to_string()), "got {got:?}");
    check!(join(&p)? == 0, "child failed");
    Ok(())
}
