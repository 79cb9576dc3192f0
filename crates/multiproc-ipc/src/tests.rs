//! Tests of `Connection` over real pipes, in one process.

use std::os::fd::{AsFd, OwnedFd};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use multiproc_core::reduction;
use rustix::pipe::{PipeFlags, pipe_with};
use serde::{Deserialize, Serialize};

use crate::{Connection, Error, pipe, simplex, socketpair};

const MIB: usize = 1024 * 1024;

fn raw_pipe() -> (OwnedFd, OwnedFd) {
    pipe_with(PipeFlags::CLOEXEC).unwrap()
}

fn write_raw(fd: impl AsFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = rustix::io::write(&fd, bytes).unwrap();
        bytes = &bytes[n..];
    }
}

fn read_all(fd: impl AsFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match rustix::io::read(&fd, &mut chunk).unwrap() {
            0 => return out,
            n => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A read-only connection fed with `bytes` by a thread that then closes its end.
fn fed(bytes: Vec<u8>) -> (Connection, JoinHandle<()>) {
    let (r, w) = raw_pipe();
    let writer = thread::spawn(move || write_raw(w, &bytes));
    (Connection::from_fds(Some(r), None), writer)
}

/// A reader and a thread that runs `write` on the matching writer, then drops it.
fn across(
    duplex: bool,
    write: impl FnOnce(&mut Connection) + Send + 'static,
) -> (Connection, JoinHandle<()>) {
    let (reader, mut writer) = if duplex { pipe() } else { oneway() }.unwrap();
    let handle = thread::spawn(move || write(&mut writer));
    (reader, handle)
}

/// A one-way pipe as two untyped connections (read-only, write-only).
fn oneway() -> Result<(Connection, Connection), Error> {
    let (r, w) = simplex()?;
    Ok((r.into_connection(), w.into_connection()))
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn text(len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

#[test]
fn send_bytes_writes_pythons_bytes() {
    let (r, w) = raw_pipe();
    let mut conn = Connection::from_fds(None, Some(w));
    conn.send_bytes(b"abc").unwrap();
    conn.send_bytes(b"").unwrap();
    let big = payload(16385);
    conn.send_bytes(&big).unwrap();
    drop(conn);
    let bytes = read_all(r);
    assert_eq!(&bytes[..11], b"\x00\x00\x00\x03abc\x00\x00\x00\x00");
    assert_eq!(&bytes[11..15], [0x00, 0x00, 0x40, 0x01]);
    assert_eq!(&bytes[15..], big);
}

#[test]
fn send_uses_the_same_framing_around_postcard() {
    let (r, w) = raw_pipe();
    let mut conn = Connection::from_fds(None, Some(w));
    conn.send("hi").unwrap();
    conn.send(&()).unwrap();
    drop(conn);
    // The payload: the fd count (0), then postcard.
    assert_eq!(
        read_all(r),
        b"\x00\x00\x00\x04\x00\x02hi\x00\x00\x00\x01\x00"
    );
}

#[test]
fn round_trip_through_a_real_pipe() {
    for duplex in [false, true] {
        for len in [0, 1, 16384, 16385, MIB, 16 * MIB] {
            let (mut r, writer) = across(duplex, move |w| w.send_bytes(&payload(len)).unwrap());
            assert_eq!(r.recv_bytes().unwrap(), payload(len), "len {len}");
            writer.join().unwrap();

            let (mut r, writer) = across(duplex, move |w| w.send_bytes(&payload(len)).unwrap());
            let mut buf = vec![0u8; len + 3];
            assert_eq!(r.recv_bytes_into(&mut buf).unwrap(), len);
            assert_eq!(buf[..len], payload(len));
            writer.join().unwrap();

            let (mut r, writer) = across(duplex, move |w| w.send(&text(len)).unwrap());
            assert_eq!(r.recv::<String>().unwrap(), text(len));
            assert!(matches!(r.recv::<String>(), Err(Error::Eof)));
            writer.join().unwrap();
        }
    }
}

#[test]
fn both_directions_of_a_duplex_pipe() {
    let (mut a, mut b) = pipe().unwrap();
    a.send_bytes(b"to b").unwrap();
    b.send_bytes(b"to a").unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"to b");
    assert_eq!(a.recv_bytes().unwrap(), b"to a");
    assert!(a.readable() && a.writable() && b.readable() && b.writable());
}

#[test]
fn a_stream_of_mixed_sizes_keeps_its_boundaries() {
    let sizes = [
        0,
        1,
        3,
        11,
        12,
        13,
        4095,
        4096,
        16383,
        16384,
        16385,
        65535,
        65536,
        65537,
        100_000,
        MIB,
        MIB + 7,
        5,
        0,
        3 * MIB,
        2,
    ];
    let (mut r, writer) = across(false, move |w| {
        for (i, &len) in sizes.iter().enumerate() {
            match i % 3 {
                2 => w.send(&text(len)).unwrap(),
                _ => w.send_bytes(&payload(len)).unwrap(),
            }
        }
    });
    for (i, &len) in sizes.iter().enumerate() {
        match i % 3 {
            0 => assert_eq!(r.recv_bytes().unwrap(), payload(len), "message {i}"),
            1 => {
                let mut buf = vec![0u8; len + i % 2];
                assert_eq!(r.recv_bytes_into(&mut buf).unwrap(), len);
                assert_eq!(buf[..len], payload(len), "message {i}");
            }
            _ => assert_eq!(r.recv::<String>().unwrap(), text(len), "message {i}"),
        }
    }
    assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
    writer.join().unwrap();
}

#[test]
fn messages_written_together_stay_apart() {
    let (mut r, mut w) = oneway().unwrap();
    w.send_bytes(b"a").unwrap();
    w.send_bytes(b"").unwrap();
    w.send(&42u64).unwrap();
    w.send_bytes(&[7; 100]).unwrap();
    drop(w);
    assert_eq!(r.recv_bytes().unwrap(), b"a");
    let mut buf = [1u8; 4];
    assert_eq!(r.recv_bytes_into(&mut buf).unwrap(), 0);
    assert!(r.poll(Some(Duration::ZERO)).unwrap());
    assert_eq!(r.recv::<u64>().unwrap(), 42);
    assert_eq!(r.recv_bytes().unwrap(), [7; 100]);
    assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
    assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
}

#[test]
fn large_header_form_is_accepted_for_any_length() {
    let (mut r, writer) = fed(b"\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x05hello".to_vec());
    assert_eq!(r.recv_bytes().unwrap(), b"hello");
    writer.join().unwrap();
}

#[test]
fn end_of_stream_before_a_message_is_eof() {
    let (mut r, w) = oneway().unwrap();
    drop(w);
    assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
    assert!(matches!(r.recv_bytes_into(&mut [0; 4]), Err(Error::Eof)));
    assert!(matches!(r.recv::<u8>(), Err(Error::Eof)));
    assert!(
        r.poll(None).unwrap(),
        "the end of the stream counts as ready"
    );
}

fn truncated(err: Result<impl std::fmt::Debug, Error>) -> (u64, u64) {
    match err {
        Err(Error::Truncated { expected, received }) => (expected, received),
        other => panic!("expected Truncated, got {other:?}"),
    }
}

#[test]
fn end_of_stream_inside_a_payload_is_truncated() {
    let frame = b"\x00\x00\x00\x0aabc".to_vec();
    let (mut r, writer) = fed(frame.clone());
    assert_eq!(truncated(r.recv_bytes()), (10, 3));
    assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
    writer.join().unwrap();

    let (mut r, writer) = fed(frame.clone());
    assert_eq!(truncated(r.recv_bytes_into(&mut [0; 64])), (10, 3));
    writer.join().unwrap();

    let (mut r, writer) = fed(frame.clone());
    assert_eq!(truncated(r.recv_bytes_into(&mut [0; 4])), (10, 3));
    writer.join().unwrap();

    let (mut r, writer) = fed(frame);
    assert_eq!(truncated(r.recv::<String>()), (10, 3));
    assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
    writer.join().unwrap();
}

#[test]
fn end_of_stream_inside_a_header_is_truncated() {
    let (mut r, writer) = fed(vec![0, 0]);
    assert_eq!(truncated(r.recv_bytes()), (4, 2));
    assert!(matches!(r.recv_bytes(), Err(Error::Eof)));
    writer.join().unwrap();

    let (mut r, writer) = fed(vec![0xff, 0xff, 0xff, 0xff, 0, 0]);
    assert_eq!(truncated(r.recv_bytes()), (12, 6));
    writer.join().unwrap();
}

#[test]
fn end_of_stream_inside_a_big_payload_is_truncated() {
    let mut frame = (MIB as i32).to_be_bytes().to_vec();
    frame.extend(payload(200_000));
    let (mut r, writer) = fed(frame.clone());
    assert_eq!(truncated(r.recv_bytes()), (MIB as u64, 200_000));
    writer.join().unwrap();

    let (mut r, writer) = fed(frame.clone());
    let mut buf = vec![0; MIB];
    assert_eq!(
        truncated(r.recv_bytes_into(&mut buf)),
        (MIB as u64, 200_000)
    );
    writer.join().unwrap();

    let (mut r, writer) = fed(frame);
    assert_eq!(truncated(r.recv::<Vec<u8>>()), (MIB as u64, 200_000));
    writer.join().unwrap();
}

#[test]
fn a_corrupt_header_claiming_2_pow_62_bytes_is_an_error_not_an_abort() {
    let mut frame = vec![0xff; 4];
    frame.extend((1u64 << 62).to_be_bytes());
    frame.extend(payload(100_000));
    for method in 0..3 {
        let (mut r, writer) = fed(frame.clone());
        let result = match method {
            0 => r.recv_bytes().map(drop),
            1 => r.recv_bytes_into(&mut [0; 16]).map(drop),
            _ => r.recv::<String>().map(drop),
        };
        assert_eq!(truncated(result), (1 << 62, 100_000), "method {method}");
        writer.join().unwrap();
    }
}

#[test]
fn a_header_beyond_the_address_space_is_too_large() {
    let mut frame = vec![0xff; 4];
    frame.extend(u64::MAX.to_be_bytes());
    let (mut r, writer) = fed(frame);
    match r.recv_bytes() {
        Err(Error::MessageTooLarge { size, limit }) => {
            assert_eq!(size, u64::MAX);
            assert_eq!(limit, isize::MAX as usize);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(r.recv_bytes(), Err(Error::Poisoned)));
    writer.join().unwrap();
}

#[test]
fn a_negative_header_poisons_the_read_side() {
    let (mut r, writer) = fed(vec![0xff, 0xff, 0xff, 0xfe, 1, 2, 3]);
    assert!(matches!(r.recv_bytes(), Err(Error::InvalidLength(-2))));
    assert!(matches!(r.recv_bytes(), Err(Error::Poisoned)));
    writer.join().unwrap();
}

#[test]
fn a_message_over_the_limit_poisons_the_read_side() {
    let (mut r, mut w) = oneway().unwrap();
    assert_eq!(r.max_message_size(), None);
    r.set_max_message_size(Some(100));
    assert_eq!(r.max_message_size(), Some(100));
    w.send_bytes(&[1; 100]).unwrap();
    w.send_bytes(&[2; 101]).unwrap();
    w.send_bytes(&[3; 5]).unwrap();
    assert_eq!(r.recv_bytes().unwrap(), [1; 100]);
    assert!(matches!(
        r.recv_bytes(),
        Err(Error::MessageTooLarge {
            size: 101,
            limit: 100
        })
    ));
    assert!(matches!(r.recv_bytes(), Err(Error::Poisoned)));
    assert!(matches!(r.recv::<u8>(), Err(Error::Poisoned)));
    assert!(matches!(r.poll(Some(Duration::ZERO)), Err(Error::Poisoned)));
    assert!(!r.readable());
    assert!(r.read_fd().is_none());
    // The read fd was closed, so the writer learns it instead of filling the pipe forever.
    assert!(matches!(w.send_bytes(b"x"), Err(Error::BrokenPipe)));
    r.close();
    assert!(matches!(r.recv_bytes(), Err(Error::Closed)));
}

#[test]
fn a_huge_claim_over_the_limit_allocates_nothing() {
    let mut frame = vec![0xff; 4];
    frame.extend((1u64 << 40).to_be_bytes());
    let (mut r, writer) = fed(frame);
    r.set_max_message_size(Some(MIB));
    assert!(matches!(
        r.recv_bytes(),
        Err(Error::MessageTooLarge { size, limit }) if size == 1 << 40 && limit == MIB
    ));
    writer.join().unwrap();
}

#[test]
fn a_poisoned_duplex_end_can_still_send() {
    let (mut a, mut b) = pipe().unwrap();
    a.set_max_message_size(Some(1));
    b.send_bytes(b"xx").unwrap();
    assert!(matches!(a.recv_bytes(), Err(Error::MessageTooLarge { .. })));
    a.send_bytes(b"still here").unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"still here");
    assert!(!a.is_closed());
}

#[test]
fn buffer_too_short_carries_the_whole_message() {
    let (mut r, mut w) = oneway().unwrap();
    w.send_bytes(b"0123456789").unwrap();
    w.send_bytes(b"next").unwrap();
    let mut buf = [0u8; 9];
    match r.recv_bytes_into(&mut buf) {
        Err(Error::BufferTooShort(message)) => assert_eq!(message, b"0123456789"),
        other => panic!("{other:?}"),
    }
    assert_eq!(buf, [0; 9], "the buffer is left alone");
    assert_eq!(r.recv_bytes_into(&mut buf[..4]).unwrap(), 4);
    assert_eq!(&buf[..4], b"next");

    let (mut r, writer) = across(false, |w| w.send_bytes(&payload(MIB)).unwrap());
    match r.recv_bytes_into(&mut buf) {
        Err(Error::BufferTooShort(message)) => assert_eq!(message, payload(MIB)),
        other => panic!("{other:?}"),
    }
    writer.join().unwrap();
}

#[test]
fn poll_times_out_then_sees_a_message() {
    let (mut a, mut b) = pipe().unwrap();
    assert!(!a.poll(Some(Duration::ZERO)).unwrap());
    let start = Instant::now();
    assert!(!a.poll(Some(Duration::from_millis(50))).unwrap());
    assert!(start.elapsed() >= Duration::from_millis(45));
    b.send_bytes(b"x").unwrap();
    assert!(a.poll(Some(Duration::ZERO)).unwrap());
    assert!(a.poll(Some(Duration::from_secs(10))).unwrap());
    assert!(a.poll(None).unwrap());
    assert!(a.poll(Some(Duration::MAX)).unwrap());
    assert_eq!(a.recv_bytes().unwrap(), b"x");
    assert!(!a.poll(Some(Duration::ZERO)).unwrap());
}

#[test]
fn poll_sees_messages_already_read_ahead() {
    let (mut a, mut b) = pipe().unwrap();
    b.send_bytes(b"one").unwrap();
    b.send_bytes(b"two").unwrap();
    assert_eq!(a.recv_bytes().unwrap(), b"one");
    // "two" came in with the same read(): the fd has nothing, the connection does.
    assert!(a.poll(Some(Duration::ZERO)).unwrap());
    assert_eq!(a.recv_bytes().unwrap(), b"two");
}

#[test]
fn poll_waits_for_a_message_from_another_thread() {
    let (mut a, writer) = across(true, |b| b.send_bytes(b"late").unwrap());
    assert!(a.poll(Some(Duration::from_secs(30))).unwrap());
    assert_eq!(a.recv_bytes().unwrap(), b"late");
    writer.join().unwrap();
}

#[test]
fn writing_without_a_reader_is_a_broken_pipe() {
    let (r, mut w) = oneway().unwrap();
    drop(r);
    assert!(matches!(w.send_bytes(b"x"), Err(Error::BrokenPipe)));
    assert!(matches!(
        w.send_bytes(&payload(MIB)),
        Err(Error::BrokenPipe)
    ));
    assert!(matches!(w.send("x"), Err(Error::BrokenPipe)));
}

#[test]
fn ends_refuse_the_wrong_direction_and_closed_ends_refuse_everything() {
    let (mut r, mut w) = oneway().unwrap();
    assert!(r.readable() && !r.writable() && r.read_fd().is_some() && r.write_fd().is_none());
    assert!(!w.readable() && w.writable() && w.read_fd().is_none() && w.write_fd().is_some());
    assert!(matches!(r.send_bytes(b"x"), Err(Error::NotWritable)));
    assert!(matches!(r.send(&1u8), Err(Error::NotWritable)));
    assert!(matches!(w.recv_bytes(), Err(Error::NotReadable)));
    assert!(matches!(w.recv::<u8>(), Err(Error::NotReadable)));
    assert!(matches!(w.poll(None), Err(Error::NotReadable)));

    assert!(!r.is_closed());
    r.close();
    r.close();
    assert!(r.is_closed() && !r.readable());
    assert!(matches!(r.recv_bytes(), Err(Error::Closed)));
    assert!(matches!(r.poll(None), Err(Error::Closed)));
    assert!(matches!(r.send_bytes(b"x"), Err(Error::Closed)));
    assert!(matches!(w.send_bytes(b"x"), Err(Error::BrokenPipe)));
    w.close();
    assert!(matches!(w.send_bytes(b"x"), Err(Error::Closed)));
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Shape {
    Circle(f64),
    Rect { w: u32, h: u32 },
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    name: String,
    values: Vec<u32>,
    shape: Option<Shape>,
}

#[test]
fn typed_messages_round_trip() {
    let (mut a, mut b) = pipe().unwrap();
    let record = Record {
        name: "r".repeat(70_000),
        values: (0..1000).collect(),
        shape: Some(Shape::Rect { w: 3, h: 4 }),
    };
    let writer = thread::spawn(move || {
        b.send(&record).unwrap();
        b.send(&Shape::Circle(1.5)).unwrap();
        b.send(&(1u8, "two", [3u16; 3])).unwrap();
        record
    });
    let got: Record = a.recv().unwrap();
    assert_eq!(a.recv::<Shape>().unwrap(), Shape::Circle(1.5));
    assert_eq!(
        a.recv::<(u8, String, [u16; 3])>().unwrap(),
        (1, "two".into(), [3; 3])
    );
    assert_eq!(got, writer.join().unwrap());
}

#[test]
fn undecodable_messages_are_decode_errors_and_are_consumed() {
    let (mut r, mut w) = oneway().unwrap();
    w.send("a string").unwrap();
    w.send(&1u8).unwrap();
    w.send_bytes(&[0xff; 12]).unwrap();
    w.send(&7u32).unwrap();
    assert!(matches!(r.recv::<u64>(), Err(Error::Decode(msg)) if msg.contains("left over")));
    assert!(matches!(r.recv::<String>(), Err(Error::Decode(_))));
    assert!(matches!(r.recv::<u32>(), Err(Error::Decode(_))));
    assert_eq!(r.recv::<u32>().unwrap(), 7);
}

#[test]
fn unencodable_values_are_encode_errors() {
    let (mut r, mut w) = oneway().unwrap();
    let (inner, _) = oneway().unwrap();
    // A pipe cannot pass the fds of a handle: a typed error names the value and its fds.
    match w.send(&(1u8, &inner)) {
        Err(Error::HandlesNeedSocket { value_type, fds }) => {
            assert!(value_type.contains("Connection"), "{value_type}");
            assert_eq!(fds.len(), 1);
            assert!(fds[0].starts_with("pipe:"), "{fds:?}");
        }
        other => panic!("expected HandlesNeedSocket, got {other:?}"),
    }
    let message = w.send(&inner).unwrap_err().to_string();
    assert!(
        message.contains("Connection") && message.contains("socketpair()"),
        "{message}"
    );
    // A Serialize impl that fails for its own reason is `Encode`, said so.
    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("no"))
        }
    }
    match w.send(&Refuses) {
        Err(Error::Encode(msg)) => assert!(msg.contains("refused"), "{msg}"),
        other => panic!("expected Encode, got {other:?}"),
    }
    w.send(&5u8).unwrap();
    assert_eq!(r.recv::<u8>().unwrap(), 5);
}

#[test]
fn a_connection_handed_over_keeps_what_it_read_ahead() {
    let (mut a, mut b) = pipe().unwrap();
    b.send_bytes(b"first").unwrap();
    b.send_bytes(b"second").unwrap();
    assert_eq!(a.recv_bytes().unwrap(), b"first");
    a.set_max_message_size(Some(1000));

    let (bytes, fds) = reduction::encode(&a).unwrap();
    assert_eq!(fds.len(), 2);
    drop(a);
    let mut c: Connection = reduction::decode(&bytes, fds).unwrap();
    assert_eq!(c.max_message_size(), Some(1000));
    assert_eq!(c.recv_bytes().unwrap(), b"second");
    c.send_bytes(b"back").unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"back");
    b.send(&9u16).unwrap();
    assert_eq!(c.recv::<u16>().unwrap(), 9);
}

#[test]
fn one_way_and_closed_connections_hand_over_too() {
    let (r, mut w) = oneway().unwrap();
    let (bytes, fds) = reduction::encode(&r).unwrap();
    assert_eq!(fds.len(), 1);
    drop(r);
    let mut r: Connection = reduction::decode(&bytes, fds).unwrap();
    assert!(r.readable() && !r.writable());
    w.send_bytes(b"ok").unwrap();
    assert_eq!(r.recv_bytes().unwrap(), b"ok");

    r.close();
    let (bytes, fds) = reduction::encode(&r).unwrap();
    assert!(fds.is_empty());
    let r: Connection = reduction::decode(&bytes, fds).unwrap();
    assert!(r.is_closed());
}

#[test]
fn serialising_outside_a_handover_fails() {
    let (a, _b) = pipe().unwrap();
    assert!(postcard::to_allocvec(&a).is_err());
}

#[test]
fn debug_shows_fds_and_state() {
    let (mut r, w) = oneway().unwrap();
    let shown = format!("{r:?}");
    assert!(shown.starts_with("Connection {"), "{shown}");
    assert!(
        shown.contains("write: None") && shown.contains("closed: false"),
        "{shown}"
    );
    assert!(format!("{w:?}").contains("read: None"));
    r.close();
    assert!(format!("{r:?}").contains("closed: true"));
}

/// A writer thread sends a header and 10 bytes of a 100-byte message, then waits to be told to
/// send the rest: the timeout receive must return at its deadline and keep the partial message.
fn stalled_peer_is_bounded(a: Connection, mut b: Connection, bytes: bool) {
    let (go, wait_go) = std::sync::mpsc::channel::<()>();
    let writer = thread::spawn(move || {
        let mut a = a;
        let body = payload(100);
        let mut frame = Vec::new();
        crate::frame::encode_header(body.len(), &mut frame);
        frame.extend_from_slice(&body);
        write_raw(a.write_fd().unwrap(), &frame[..14]);
        // After 30 s the rest goes anyway: a receive that ignores its deadline then fails the
        // 20 s bound below instead of hanging the test.
        let _ = wait_go.recv_timeout(Duration::from_secs(30));
        write_raw(a.write_fd().unwrap(), &frame[14..]);
        a.send_bytes(b"next").unwrap();
        a
    });
    let timeout = Duration::from_millis(300);
    for _ in 0..2 {
        let start = Instant::now();
        let err = if bytes {
            b.recv_bytes_timeout(timeout).unwrap_err()
        } else {
            b.recv_timeout::<Vec<u8>>(timeout).unwrap_err()
        };
        let took = start.elapsed();
        assert!(matches!(err, Error::Timeout(t) if t == timeout), "{err:?}");
        assert!(took >= timeout, "returned early after {took:?}");
        assert!(took < Duration::from_secs(20), "held for {took:?}");
        // Nothing of the partial message is lost, nor shown as ready.
        assert!(!b.poll(Some(Duration::ZERO)).unwrap());
    }
    let _ = go.send(());
    let long = Duration::from_secs(60);
    assert_eq!(b.recv_bytes_timeout(long).unwrap(), payload(100));
    assert_eq!(b.recv_bytes_timeout(long).unwrap(), b"next");
    let _a = writer.join().unwrap();
}

#[test]
fn recv_timeout_bounds_a_peer_stalled_mid_message_and_keeps_the_part() {
    let (a, b) = pipe().unwrap();
    stalled_peer_is_bounded(a, b, true);
    let (a, b) = pipe().unwrap();
    stalled_peer_is_bounded(a, b, false);
    let (a, b) = socketpair().unwrap();
    stalled_peer_is_bounded(a, b, true);
}

#[test]
fn recv_timeout_returns_whole_messages_and_reports_eof() {
    for make in [pipe, socketpair] {
        let (mut a, mut b) = make().unwrap();
        let t = Duration::from_millis(20);
        assert!(matches!(b.recv_bytes_timeout(t), Err(Error::Timeout(_))));
        assert!(matches!(b.recv_timeout::<u8>(t), Err(Error::Timeout(_))));
        a.send(&(1u8, "x".to_string())).unwrap();
        let writer = thread::spawn(move || {
            a.send_bytes(&payload(3 * MIB)).unwrap();
            a.send_bytes(b"tail").unwrap();
            a.send(&payload(200_000)).unwrap();
            a
        });
        let long = Duration::from_secs(60);
        assert_eq!(
            b.recv_timeout::<(u8, String)>(long).unwrap(),
            (1, "x".to_string())
        );
        assert_eq!(b.recv_bytes_timeout(long).unwrap(), payload(3 * MIB));
        assert_eq!(b.recv_bytes_timeout(long).unwrap(), b"tail");
        assert_eq!(b.recv_timeout::<Vec<u8>>(long).unwrap(), payload(200_000));
        drop(writer.join().unwrap());
        assert!(matches!(b.recv_bytes_timeout(long), Err(Error::Eof)));
    }
}

#[test]
fn recv_timeout_on_a_truncated_message_is_truncated() {
    let (mut r, w) = raw_pipe_conns();
    write_raw(w.write_fd().unwrap(), b"\x00\x00\x00\x10abc");
    drop(w);
    match r.recv_bytes_timeout(Duration::from_secs(60)) {
        Err(Error::Truncated { expected, received }) => assert_eq!((expected, received), (16, 3)),
        other => panic!("expected Truncated, got {other:?}"),
    }
}

fn raw_pipe_conns() -> (Connection, Connection) {
    oneway().unwrap()
}

#[test]
fn handles_travel_over_a_socketpair() {
    let (mut a, mut b) = socketpair().unwrap();
    assert!(a.carries_handles() && b.carries_handles());
    let (mut x, y) = pipe().unwrap();
    let (r, mut w) = simplex().unwrap();
    // Plain messages around messages with handles: each message gets its own fds back.
    a.send(&1u32).unwrap();
    a.send(&y).unwrap();
    a.send_bytes(b"raw").unwrap();
    a.send(&("reader", &r)).unwrap();
    a.send(&2u32).unwrap();
    drop((y, r));
    assert_eq!(b.recv::<u32>().unwrap(), 1);
    let mut y2: Connection = b.recv().unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"raw");
    let (label, mut r2): (String, crate::Reader) = b.recv().unwrap();
    assert_eq!(label, "reader");
    assert_eq!(b.recv::<u32>().unwrap(), 2);
    x.send(&"to y").unwrap();
    assert_eq!(y2.recv::<String>().unwrap(), "to y");
    y2.send(&"to x").unwrap();
    assert_eq!(x.recv::<String>().unwrap(), "to x");
    w.send_bytes(b"to r").unwrap();
    assert_eq!(r2.recv_bytes().unwrap(), b"to r");
    // The socket connection itself travels too, and keeps carrying handles.
    let (c, mut d) = socketpair().unwrap();
    a.send(&c).unwrap();
    drop(c);
    let mut c2: Connection = b.recv().unwrap();
    assert!(c2.carries_handles());
    let (e, mut f) = pipe().unwrap();
    c2.send(&e).unwrap();
    drop(e);
    let mut e2: Connection = d.recv().unwrap();
    e2.send_bytes(b"deep").unwrap();
    assert_eq!(f.recv_bytes().unwrap(), b"deep");
}

#[test]
fn handles_read_ahead_travel_with_the_connection() {
    let (mut a, mut b) = socketpair().unwrap();
    let (x, mut y) = pipe().unwrap();
    a.send(&0u8).unwrap();
    a.send(&x).unwrap();
    drop(x);
    // b reads ahead (often both messages in one read), then is handed over.
    assert_eq!(b.recv::<u8>().unwrap(), 0);
    let (bytes, fds) = reduction::encode(&b).unwrap();
    drop(b);
    let mut b2: Connection = reduction::decode(&bytes, fds).unwrap();
    let mut x2: Connection = b2.recv().unwrap();
    x2.send_bytes(b"ok").unwrap();
    assert_eq!(y.recv_bytes().unwrap(), b"ok");
}

#[test]
fn stray_fds_without_a_message_are_dropped_not_misattributed() {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    use std::mem::MaybeUninit;
    let (mut a, mut b) = socketpair().unwrap();
    // A misbehaving peer attaches an fd to a frame that announces none.
    let (stray_r, _stray_w) = raw_pipe();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [stray_r.as_fd()];
    assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
    let frame = b"\x00\x00\x00\x02\x00\x07"; // a typed `7u8` with fd count 0
    let sent = rustix::net::sendmsg(
        a.write_fd().unwrap(),
        &[std::io::IoSlice::new(frame)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(sent, frame.len());
    drop(stray_r);
    let (x, mut y) = pipe().unwrap();
    a.send(&x).unwrap();
    assert_eq!(b.recv::<u8>().unwrap(), 7);
    let mut x2: Connection = b.recv().unwrap();
    x2.send_bytes(b"right fd").unwrap();
    assert_eq!(y.recv_bytes().unwrap(), b"right fd");
    // A message that announces fds that never came is a Decode error, and is consumed.
    a.send_bytes(b"\x01\x00").unwrap();
    a.send(&3u8).unwrap();
    assert!(matches!(b.recv::<u8>(), Err(Error::Decode(m)) if m.contains("announces 1")));
    assert_eq!(b.recv::<u8>().unwrap(), 3);
}

#[test]
fn try_clone_shares_the_channel() {
    let (mut a, mut b) = pipe().unwrap();
    a.set_max_message_size(Some(64));
    let mut a2 = a.try_clone().unwrap();
    assert_eq!(a2.max_message_size(), Some(64));
    b.send_bytes(b"one").unwrap();
    assert_eq!(a2.recv_bytes().unwrap(), b"one");
    a2.send_bytes(b"two").unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"two");
    // Closing one copy leaves the other working; EOF only when both are gone.
    drop(a2);
    a.send_bytes(b"three").unwrap();
    assert_eq!(b.recv_bytes().unwrap(), b"three");
    drop(a);
    assert!(matches!(b.recv_bytes(), Err(Error::Eof)));
    let (r, w) = simplex().unwrap();
    let (mut r2, mut w2) = (r.try_clone().unwrap(), w.try_clone().unwrap());
    drop((r, w));
    w2.send(&4u8).unwrap();
    assert_eq!(r2.recv::<u8>().unwrap(), 4);
    let mut c = b.try_clone().unwrap();
    c.close();
    assert!(matches!(c.try_clone(), Err(Error::Closed)));
}

#[test]
fn wait_reports_ready_objects_and_buffered_messages() {
    use crate::{Waitable, wait};
    let (mut a, mut b) = pipe().unwrap();
    let (mut c, d) = socketpair().unwrap();
    let t = Some(Duration::from_millis(20));
    assert!(wait(&[&b, &d], t).unwrap().is_empty());
    c.send_bytes(b"1").unwrap();
    c.send_bytes(b"2").unwrap();
    assert_eq!(wait(&[&b, &d], None).unwrap(), [1]);
    let mut d = d;
    assert_eq!(d.recv_bytes().unwrap(), b"1");
    // "2" came in the same read: the fd is empty, yet d is ready.
    assert!(
        !rustix::event::poll(
            &mut [rustix::event::PollFd::new(
                &d.read_fd().unwrap(),
                rustix::event::PollFlags::IN
            )],
            Some(&rustix::event::Timespec::default())
        )
        .is_ok_and(|n| n > 0)
    );
    assert_eq!(wait(&[&b, &d], None).unwrap(), [1]);
    assert_eq!(d.recv_bytes().unwrap(), b"2");
    a.send_bytes(b"x").unwrap();
    let (r, _w) = raw_pipe();
    let mixed: [&dyn Waitable; 3] = [&b, &d, &r];
    assert_eq!(wait(&mixed, t).unwrap(), [0]);
    drop(c);
    assert_eq!(wait(&mixed, t).unwrap(), [0, 1]);
    // A write-only or closed connection cannot be waited on.
    let (_r, w) = oneway().unwrap();
    assert!(matches!(wait(&[&w], t), Err(Error::NotReadable)));
    b.close();
    assert!(matches!(wait(&[&b], t), Err(Error::Closed)));
}
