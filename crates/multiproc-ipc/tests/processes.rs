//! Connections handed to child processes, under every start method.
//!
//! `harness = false`: one test thread, trials on the main thread, so fork is allowed.
//! Every child is a daemon: a failed check that leaves one blocked (under fork it inherits
//! the parent's ends, so it never sees EOF) is killed at exit, and the failure is reported
//! instead of hanging the binary.

use std::time::Duration;

use std::time::Instant;

use multiproc_core::StartMethod;
use multiproc_ipc::{
    Address, Client, Connection, Error, Listener, Reader, Waitable, Writer, pipe, simplex,
    socketpair, wait,
};
use multiproc_sync::Lock;
use multiproc_testkit::{End, Failed, LONG, TestFn, check, join, start_daemon as start};

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
        (
            "wait_sees_a_message_and_an_exited_process",
            wait_sees_a_message_and_an_exited_process,
        ),
        (
            "a_connection_and_a_lock_sent_to_a_running_child_work_there",
            a_connection_and_a_lock_sent_to_a_running_child_work_there,
        ),
        (
            "handles_over_a_pipe_to_a_running_child",
            handles_over_a_pipe_to_a_running_child,
        ),
        (
            "peer_killed_mid_message_is_truncated",
            peer_killed_mid_message_is_truncated,
        ),
        (
            "recv_timeout_bounds_a_stalled_child",
            recv_timeout_bounds_a_stalled_child,
        ),
        (
            "try_clone_hands_one_end_to_two_children",
            try_clone_hands_one_end_to_two_children,
        ),
        (
            "listener_serves_child_clients_over_tcp_and_unix",
            listener_serves_child_clients_over_tcp_and_unix,
        ),
        (
            "stalled_and_garbage_clients_do_not_block_the_listener",
            stalled_and_garbage_clients_do_not_block_the_listener,
        ),
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
    let (mut mine, theirs) = pipe()?;
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
fn reverser((mut rx, mut tx): (Reader, Writer)) {
    while let Ok(word) = rx.recv::<String>() {
        if word == "stop" {
            break;
        }
        tx.send(&word.chars().rev().collect::<String>()).unwrap();
    }
}

fn simplex_to_child_and_back(m: StartMethod) -> Result<(), Failed> {
    let (child_rx, mut tx) = simplex()?;
    let (mut rx, child_tx) = simplex()?;
    let p = start(m, reverser, (child_rx, child_tx))?;
    for w in ["hello", "", "multiproc"] {
        tx.send(&w)?;
        check!(rx.poll(Some(LONG))?, "nothing received within {LONG:?}");
        let back: String = rx.recv()?;
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
    let (mut mine, theirs) = pipe()?;
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
    let (mut mine, theirs) = pipe()?;
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
    let (mut mine, theirs) = pipe()?;
    let p = start(m, hold_and_sleep, theirs)?;
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
    let (mut a, mut b) = pipe()?;
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
    let (mut parent_conn, child_conn) = pipe()?;
    let p = start(m, seed_f, child_conn)?;
    let got: (i32, Option<i32>, String) = recv(&mut parent_conn)?;
    check!(got == (42, None, "hello".to_string()), "got {got:?}");
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

/// Receives whatever the parent sends until EOF or "stop"; never answers.
fn silent(mut conn: Connection) {
    while let Ok(word) = conn.recv::<String>() {
        if word == "stop" {
            break;
        }
    }
}

fn says_hi_then_waits(mut conn: Connection) {
    conn.send(&"hi").unwrap();
    let _ = conn.recv::<String>();
}

fn wait_sees_a_message_and_an_exited_process(m: StartMethod) -> Result<(), Failed> {
    let (mut talk, talk_child) = pipe()?;
    let (mut quiet, quiet_child) = socketpair()?;
    let talker = start(m, says_hi_then_waits, talk_child)?;
    let sleeper = start(m, silent, quiet_child)?;
    let quitter = start(m, |()| {}, ())?;
    let deadline = Instant::now() + LONG;
    let mut seen = Vec::new();
    {
        let quitter_sentinel = quitter.sentinel()?;
        let sleeper_sentinel = sleeper.sentinel()?;
        let objects: [&dyn Waitable; 4] = [&talk, &quiet, &quitter_sentinel, &sleeper_sentinel];
        while !(seen.contains(&0) && seen.contains(&2)) {
            check!(Instant::now() < deadline, "wait saw only {seen:?}");
            let ready = wait(&objects, Some(LONG))?;
            check!(!ready.is_empty(), "wait timed out; saw {seen:?}");
            check!(
                !ready.contains(&1) && !ready.contains(&3),
                "wait reported {ready:?}: the silent child neither wrote nor exited"
            );
            seen.extend(ready);
        }
        // What is not ready gives an empty answer at the timeout.
        let idle: [&dyn Waitable; 2] = [&quiet, &sleeper_sentinel];
        let start = Instant::now();
        let ready = wait(&idle, Some(Duration::from_millis(200)))?;
        check!(ready.is_empty(), "idle objects reported ready: {ready:?}");
        check!(
            start.elapsed() >= Duration::from_millis(200),
            "wait returned before its timeout"
        );
    }
    let hi: String = recv(&mut talk)?;
    check!(hi == "hi", "talker said {hi}");
    check!(join(&quitter)? == 0, "quitter failed");
    talk.send(&"bye")?;
    quiet.send(&"stop")?;
    check!(join(&talker)? == 0, "talker failed");
    check!(join(&sleeper)? == 0, "sleeper failed");
    Ok(())
}

/// Receives a Lock and a Connection over `ctl` while running: proves the lock is the
/// parent's (it is held, then taken once the parent releases it), answering over the
/// received connection.
fn lock_user(mut ctl: Connection) {
    let (lock, mut reply): (Lock, Connection) = ctl.recv().unwrap();
    let held = lock.try_acquire().is_err();
    reply.send(&("held by the parent", held)).unwrap();
    let Ok(guard) = lock.acquire_timeout(LONG) else {
        panic!("the parent never released the lock");
    };
    reply.send(&("acquired", true)).unwrap();
    // Holds it until the parent has checked that it is held.
    let _: String = reply.recv().unwrap();
    drop(guard);
    reply.send(&("released", true)).unwrap();
}

fn a_connection_and_a_lock_sent_to_a_running_child_work_there(
    m: StartMethod,
) -> Result<(), Failed> {
    handles_to_a_running_child(m, socketpair()?)
}

/// The same over `pipe()`, whose side socket carries the handles.
fn handles_over_a_pipe_to_a_running_child(m: StartMethod) -> Result<(), Failed> {
    handles_to_a_running_child(m, pipe()?)
}

fn handles_to_a_running_child(
    m: StartMethod,
    (mut ctl, ctl_child): (Connection, Connection),
) -> Result<(), Failed> {
    let p = start(m, lock_user, ctl_child)?;
    let lock = Lock::new()?;
    let Ok(guard) = lock.acquire() else {
        return Err("a new lock could not be acquired".into());
    };
    let (mut mine, theirs) = pipe()?;
    // The child is already running: the fds go over the socket, not through start().
    ctl.send(&(&lock, &theirs))?;
    drop(theirs);
    let (what, held): (String, bool) = recv(&mut mine)?;
    check!(
        what == "held by the parent" && held,
        "the child's lock was not held by the parent: {what} {held}"
    );
    check!(
        !mine.poll(Some(Duration::from_millis(200)))?,
        "the child acquired the lock while the parent held it"
    );
    drop(guard);
    let (what, _): (String, bool) = recv(&mut mine)?;
    check!(what == "acquired", "child said {what}");
    check!(
        lock.try_acquire().is_err(),
        "the parent could take the lock the child holds"
    );
    mine.send(&"checked")?;
    let (what, _): (String, bool) = recv(&mut mine)?;
    check!(what == "released", "child said {what}");
    check!(
        lock.acquire_timeout(LONG).is_ok(),
        "the lock is not free after the child released it"
    );
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

/// Writes a header announcing 1000 bytes and 10 of them, tells the parent, then waits to be
/// killed.
fn half_a_message((conn, mut told): (Connection, Writer)) {
    let mut frame = Vec::new();
    multiproc_ipc::frame::encode_header(1000, &mut frame);
    frame.extend_from_slice(&[7; 10]);
    let n = rustix::io::write(conn.write_fd().unwrap(), &frame).unwrap();
    assert_eq!(n, frame.len());
    told.send(&"written").unwrap();
    std::thread::sleep(Duration::from_secs(3600));
}

fn peer_killed_mid_message_is_truncated(m: StartMethod) -> Result<(), Failed> {
    let (mut mine, theirs) = pipe()?;
    let (mut told, tell) = simplex()?;
    let p = start(m, half_a_message, (theirs, tell))?;
    check!(told.poll(Some(LONG))?, "the child never wrote");
    let said: String = told.recv()?;
    check!(said == "written", "child said {said}");
    p.kill()?;
    check!(join(&p)? == -9, "exit code");
    match mine.recv_bytes() {
        Err(Error::Truncated { expected, received }) => check!(
            (expected, received) == (1000, 10),
            "Truncated with {expected}/{received}, not 1000/10"
        ),
        other => return Err(format!("expected Truncated, got {other:?}").into()),
    }
    Ok(())
}

/// Writes a header and 10 of 100 bytes, tells the parent, then finishes the message when
/// told to go.
fn stall_then_finish((mut conn, mut told): (Connection, Writer)) {
    let body: Vec<u8> = (0..100u8).collect();
    let mut frame = Vec::new();
    multiproc_ipc::frame::encode_header(body.len(), &mut frame);
    frame.extend_from_slice(&body);
    let n = rustix::io::write(conn.write_fd().unwrap(), &frame[..14]).unwrap();
    assert_eq!(n, 14);
    told.send(&"stalled").unwrap();
    // Finishes after 30 s even without "go", so that a receive that waits for the whole
    // message regardless of its deadline fails the parent's 20 s bound instead of hanging.
    if conn.poll(Some(Duration::from_secs(30))).unwrap() {
        let go: String = conn.recv().unwrap();
        assert_eq!(go, "go");
    }
    let n = rustix::io::write(conn.write_fd().unwrap(), &frame[14..]).unwrap();
    assert_eq!(n, frame.len() - 14);
    conn.send(&"after").unwrap();
}

fn recv_timeout_bounds_a_stalled_child(m: StartMethod) -> Result<(), Failed> {
    let (mut mine, theirs) = pipe()?;
    let (mut told, tell) = simplex()?;
    let p = start(m, stall_then_finish, (theirs, tell))?;
    check!(told.poll(Some(LONG))?, "the child never wrote");
    let said: String = told.recv()?;
    check!(said == "stalled", "child said {said}");
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let result = mine.recv_bytes_timeout(timeout);
    let took = started.elapsed();
    check!(
        matches!(result, Err(Error::Timeout(_))),
        "expected Timeout, got {result:?}"
    );
    check!(
        took >= timeout && took < Duration::from_secs(20),
        "recv_bytes_timeout(1 s) returned after {took:?}"
    );
    let result = mine.recv_timeout::<Vec<u8>>(Duration::from_millis(100));
    check!(
        matches!(result, Err(Error::Timeout(_))),
        "expected Timeout, got {result:?}"
    );
    mine.send(&"go")?;
    let whole = mine.recv_bytes_timeout(LONG)?;
    check!(
        whole == (0..100u8).collect::<Vec<u8>>(),
        "the message came back damaged: {} bytes",
        whole.len()
    );
    let after: String = mine.recv_timeout(LONG)?;
    check!(after == "after", "then {after}");
    check!(join(&p)? == 0, "child failed");
    Ok(())
}

/// Sends its id over the connection.
fn say_id((mut conn, id): (Connection, u32)) {
    conn.send(&id).unwrap();
}

fn try_clone_hands_one_end_to_two_children(m: StartMethod) -> Result<(), Failed> {
    let (mut mine, theirs) = pipe()?;
    let p1 = start(m, say_id, (theirs.try_clone()?, 1))?;
    let p2 = start(m, say_id, (theirs.try_clone()?, 2))?;
    let mut ids = [recv::<u32>(&mut mine)?, recv::<u32>(&mut mine)?];
    ids.sort();
    check!(ids == [1, 2], "ids {ids:?}");
    check!(join(&p1)? == 0 && join(&p2)? == 0, "a child failed");
    // The parent's own copy still works.
    let mut theirs = theirs;
    theirs.send(&3u32)?;
    check!(recv::<u32>(&mut mine)? == 3, "the kept end");
    Ok(())
}

const KEY: &[u8] = b"listener test key";

/// Connects to the listener with the right key (or the wrong one), echoes one message with
/// a prefix, waits for the parent to close, and reports `echoed` (or `refused`).
fn echo_client((address, key, report): (Address, Vec<u8>, End)) {
    let connected = Client::builder(&address)
        .authkey(&key)
        .timeout(LONG)
        .connect();
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(Error::Authentication(_)) => return report.send("refused"),
        Err(e) => panic!("connect to {address}: {e}"),
    };
    let message = conn.recv_bytes().unwrap();
    conn.send_bytes(&[b"child:".as_slice(), &message].concat())
        .unwrap();
    assert!(matches!(conn.recv_bytes(), Err(Error::Eof)));
    report.send("echoed");
}

/// Starts an `echo_client` child; returns it and the end its report comes on.
fn start_echo_client(
    m: StartMethod,
    listener: &Listener,
    key: &[u8],
) -> Result<(multiproc_core::Process, End), Failed> {
    let (report, report_w) = End::pair();
    let p = start(
        m,
        echo_client,
        (listener.address().clone(), key.to_vec(), report_w),
    )?;
    Ok((p, report))
}

fn listener_serves_child_clients_over_tcp_and_unix(m: StartMethod) -> Result<(), Failed> {
    for address in [
        "127.0.0.1:0".parse::<Address>()?,
        Address::arbitrary_unix()?,
    ] {
        let listener = Listener::bind(address, Some(KEY))?;
        // Two children one after the other, then one with the wrong key.
        for n in 0..2u8 {
            let (p, report) = start_echo_client(m, &listener, KEY)?;
            let mut conn = listener.accept_timeout(LONG)?;
            conn.send_bytes(&[b'0' + n])?;
            check!(conn.poll(Some(LONG))?, "no echo from the child");
            let echo = conn.recv_bytes()?;
            check!(
                echo == [b"child:".as_slice(), &[b'0' + n]].concat(),
                "echo {echo:?}"
            );
            drop(conn);
            check!(report.line()? == "echoed", "the child did not finish");
            check!(join(&p)? == 0, "child failed");
        }
        let (p, report) = start_echo_client(m, &listener, b"wrong")?;
        let refused = listener.accept_timeout(LONG);
        check!(
            matches!(refused, Err(Error::Authentication(_))),
            "a wrong key was not refused: {refused:?}"
        );
        check!(
            report.line()? == "refused",
            "the child saw no authentication error"
        );
        check!(join(&p)? == 0, "child failed");
        let address = listener.address().clone();
        drop(listener);
        if let Address::Unix(path) = address {
            check!(!path.exists(), "socket file left behind");
        }
    }
    Ok(())
}

/// Connects and then does nothing until killed.
fn stalled_client((address, ready): (Address, End)) {
    let _conn = Client::connect(address, None).unwrap();
    ready.send("connected");
    std::thread::sleep(Duration::from_secs(3600));
}

/// Connects and writes a header that announces 2 GiB, then part of a frame, then leaves.
fn garbage_client(address: Address) {
    let mut conn = Client::connect(address, None).unwrap();
    let fd = conn.write_fd().unwrap();
    rustix::io::write(fd, b"\x7f\xff\xff\xff").unwrap();
    conn.close();
}

fn stalled_and_garbage_clients_do_not_block_the_listener(m: StartMethod) -> Result<(), Failed> {
    let timeout = Duration::from_millis(300);
    let listener = Listener::builder()
        .address("127.0.0.1:0".parse::<Address>()?)
        .authkey(KEY)
        .handshake_timeout(Some(timeout))
        .bind()?;
    let (ready, ready_w) = End::pair();
    let stalled = start(m, stalled_client, (listener.address().clone(), ready_w))?;
    check!(
        ready.line()? == "connected",
        "the stalled child did not connect"
    );
    let started = Instant::now();
    let err = listener.accept_timeout(LONG).unwrap_err();
    check!(
        matches!(err, Error::HandshakeTimeout(t) if t == timeout),
        "stalled client: {err}"
    );
    check!(
        started.elapsed() >= timeout,
        "the handshake deadline came early"
    );

    let garbage = start(m, garbage_client, listener.address().clone())?;
    let err = listener.accept_timeout(LONG).unwrap_err();
    check!(
        matches!(err, Error::Authentication(_)),
        "garbage client: {err}"
    );
    check!(join(&garbage)? == 0, "the garbage child failed");

    let (good, report) = start_echo_client(m, &listener, KEY)?;
    let mut conn = listener.accept_timeout(LONG)?;
    conn.send_bytes(b"after")?;
    check!(conn.poll(Some(LONG))?, "no echo from the child");
    check!(conn.recv_bytes()? == b"child:after", "wrong echo");
    drop(conn);
    check!(report.line()? == "echoed", "the good child did not finish");
    check!(join(&good)? == 0, "the good child failed");
    stalled.kill()?;
    join(&stalled)?;
    Ok(())
}
