//! Shared values and arrays across real processes, every test under fork, spawn and
//! forkserver (`harness = false`: one test thread, trials on the main thread).

use std::time::Duration;

use multiproc_core::{Process, StartMethod, get_context};
use multiproc_shm::{AnyLock, Array, RawArray, RawValue, SharedMemory, Value};
use multiproc_sync::Lock;
use multiproc_testkit::{Failed, LONG, TestFn, Trial, check, join_all, start};

fn main() {
    let tests: &[(&str, TestFn)] = &[
        ("array_seed_ends_at_1001", array_seed_ends_at_1001),
        (
            "value_counter_with_lock_reaches_4000",
            value_counter_with_lock_reaches_4000,
        ),
        ("value_with_a_caller_lock", value_with_a_caller_lock),
        (
            "raw_value_and_raw_array_are_shared",
            raw_value_and_raw_array_are_shared,
        ),
        ("struct_values", struct_values),
        ("shared_memory_seed_by_name", shared_memory_seed_by_name),
        (
            "shared_memory_handle_to_child",
            shared_memory_handle_to_child,
        ),
        (
            "killed_creator_segment_is_removed",
            killed_creator_segment_is_removed,
        ),
    ];
    let mut trials = multiproc_testkit::trials(tests);
    trials.push(Trial::test("shared_memory_errors", shared_memory_errors));
    trials.push(Trial::test(
        "python_attaches_ours_and_we_attach_pythons",
        python_interop,
    ));
    multiproc_testkit::run(trials);
}

fn add_100(a: Array<i32>) {
    a.lock()[0] += 100;
}

fn array_seed_ends_at_1001(m: StartMethod) -> Result<(), Failed> {
    let a = Array::from_slice(&[1i32, 2, 3, 4])?;
    let ps: Vec<Process> = (0..10)
        .map(|_| start(m, add_100, a.clone()))
        .collect::<Result<_, _>>()?;
    join_all(&ps)?;
    check!(a.to_vec() == [1001, 2, 3, 4], "array {:?}", a.to_vec());
    check!(a.len() == 4 && a.get(3) == 4, "len/get");
    Ok(())
}

fn increment_1000(v: Value<u64>) {
    for _ in 0..1000 {
        *v.lock() += 1;
    }
}

fn value_counter_with_lock_reaches_4000(m: StartMethod) -> Result<(), Failed> {
    let v = Value::new(0u64)?;
    let ps: Vec<Process> = (0..4)
        .map(|_| start(m, increment_1000, v.clone()))
        .collect::<Result<_, _>>()?;
    join_all(&ps)?;
    check!(v.get() == 4000, "counter {}", v.get());
    Ok(())
}

/// Moves 500 units from one element to the other, one unit per hold of the lock.
fn transfer(pair: Array<i64>) {
    for _ in 0..500 {
        let mut g = pair.lock();
        g[0] -= 1;
        g[1] += 1;
        assert_eq!(g[0] + g[1], 1000);
    }
}

fn value_with_a_caller_lock(m: StartMethod) -> Result<(), Failed> {
    let lock = Lock::new()?;
    let pair = Array::from_slice_with_lock(&[1000i64, 0], lock.clone())?;
    let v = Value::with_lock(7u8, lock.clone())?;
    check!(matches!(v.get_lock(), AnyLock::Lock(_)), "lock kind");
    let ps: Vec<Process> = (0..3)
        .map(|_| start(m, transfer, pair.clone()))
        .collect::<Result<_, _>>()?;
    join_all(&ps)?;
    check!(pair.to_vec() == [-500, 1500], "pair {:?}", pair.to_vec());
    // The value shares the caller's lock: held elsewhere, the value cannot be read.
    let held = lock.acquire().map_err(|e| format!("{e}"))?;
    check!(lock.is_locked(), "held");
    drop(held);
    check!(v.get() == 7, "value {}", v.get());
    Ok(())
}

fn raw_writer((v, a): (RawValue<f64>, RawArray<u16>)) {
    v.set(2.5);
    for i in 0..a.len() {
        a.set(i, (i * 3) as u16);
    }
}

fn raw_value_and_raw_array_are_shared(m: StartMethod) -> Result<(), Failed> {
    let v = RawValue::new(0.0f64)?;
    let a = RawArray::<u16>::zeroed(1000)?;
    let p = start(m, raw_writer, (v.clone(), a.clone()))?;
    join_all(&[p])?;
    check!(v.get() == 2.5, "raw value {}", v.get());
    check!(
        a.to_vec()
            .iter()
            .enumerate()
            .all(|(i, &x)| x == (i * 3) as u16),
        "raw array"
    );
    // SAFETY: the only writer has been joined.
    let slice = unsafe { a.as_slice() };
    check!(slice[999] == 2997, "slice view");
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
struct Point {
    x: f32,
    y: f32,
    tag: [u8; 8],
}

fn shift(v: Value<Point>) {
    let mut p = v.lock();
    p.x += 1.0;
    p.tag[0] = b'!';
}

fn struct_values(m: StartMethod) -> Result<(), Failed> {
    let v = Value::new(Point {
        x: 1.0,
        y: 2.0,
        tag: *b"point...",
    })?;
    let p = start(m, shift, v.clone())?;
    join_all(&[p])?;
    let got = v.get();
    check!(
        got.x == 2.0 && got.y == 2.0 && &got.tag == b"!oint...",
        "{got:?}"
    );
    Ok(())
}

fn unique(tag: &str, m: StartMethod) -> String {
    format!("mp_test_{}_{tag}_{m}", std::process::id())
}

/// Attaches by name and writes 1..=5 at the start (the seed's child).
fn fill_1_to_5(name: String) {
    let shm = SharedMemory::attach(&name).unwrap();
    shm.write(0, &[1, 2, 3, 4, 5]).unwrap();
}

fn shared_memory_seed_by_name(m: StartMethod) -> Result<(), Failed> {
    let name = unique("seed", m);
    let mut shm = SharedMemory::create(Some(&name), 4096)?;
    check!(shm.name() == name && shm.size() == 4096, "{shm:?}");
    let p = start(m, fill_1_to_5, name.clone())?;
    join_all(&[p])?;
    let mut ten = [0u8; 10];
    shm.read(0, &mut ten)?;
    check!(ten == [1, 2, 3, 4, 5, 0, 0, 0, 0, 0], "bytes {ten:?}");
    shm.close();
    check!(
        matches!(shm.read(0, &mut ten), Err(multiproc_shm::Error::Closed)),
        "read after close"
    );
    shm.unlink()?;
    check!(
        !std::path::Path::new(&format!("/dev/shm/{name}")).exists(),
        "name left after unlink"
    );
    Ok(())
}

fn double_all(shm: SharedMemory) {
    let mut buf = vec![0u8; shm.size()];
    shm.read(0, &mut buf).unwrap();
    for b in &mut buf {
        *b = b.wrapping_mul(2);
    }
    shm.write(0, &buf).unwrap();
}

fn shared_memory_handle_to_child(m: StartMethod) -> Result<(), Failed> {
    let shm = SharedMemory::create(None, 100_000)?;
    check!(
        shm.name().starts_with("psm_"),
        "generated name {}",
        shm.name()
    );
    let data: Vec<u8> = (0..100_000).map(|i| (i % 100) as u8).collect();
    shm.write(0, &data)?;
    let p = start(m, double_all, SharedMemory::attach(shm.name())?)?;
    join_all(&[p])?;
    let mut back = vec![0u8; 100_000];
    shm.read(0, &mut back)?;
    check!(
        back.iter().zip(&data).all(|(b, d)| *b == d * 2),
        "child's writes not seen"
    );
    shm.unlink()?;
    Ok(())
}

/// Creates a tracked segment, says so, and sleeps without unlinking it.
fn create_and_hang((name, ready): (String, multiproc_sync::Event)) {
    let shm = SharedMemory::create(Some(&name), 8192).unwrap();
    std::mem::forget(shm);
    ready.set();
    std::thread::sleep(Duration::from_secs(3600));
}

fn killed_creator_segment_is_removed(m: StartMethod) -> Result<(), Failed> {
    let name = unique("killed", m);
    let path = format!("/dev/shm/{name}");
    let ready = multiproc_sync::Event::new()?;
    let mut p = get_context(m).process(create_and_hang, (name.clone(), ready.clone()));
    p.set_daemon(true)?;
    p.start()?;
    check!(ready.wait_timeout(LONG), "the creator never got ready");
    check!(std::path::Path::new(&path).exists(), "segment not created");
    p.kill()?;
    check!(p.join_timeout(LONG)? == Some(-9), "creator not killed");
    // The creator's tracker sees its pipe close and unlinks: poll for the effect.
    let deadline = std::time::Instant::now() + LONG;
    while std::path::Path::new(&path).exists() {
        check!(std::time::Instant::now() < deadline, "{path} still there");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn shared_memory_errors() -> Result<(), Failed> {
    use multiproc_shm::Error;
    let name = format!("mp_test_{}_errors", std::process::id());
    let shm = SharedMemory::create(Some(&name), 10)?;
    check!(
        matches!(SharedMemory::create(Some(&name), 10), Err(Error::Exists(_))),
        "create existing"
    );
    check!(
        matches!(SharedMemory::create(None, 0), Err(Error::InvalidSize)),
        "size 0"
    );
    check!(
        matches!(
            SharedMemory::attach("mp_test_no_such_segment"),
            Err(Error::NotFound(_))
        ),
        "attach missing"
    );
    check!(
        matches!(shm.write(8, &[0; 4]), Err(Error::OutOfRange { .. })),
        "write past the end"
    );
    check!(
        matches!(
            SharedMemory::create(Some("a/b"), 10),
            Err(Error::InvalidName(_))
        ),
        "bad name"
    );
    shm.unlink()?;
    check!(
        matches!(shm.unlink(), Err(Error::NotFound(_))),
        "second unlink"
    );
    Ok(())
}

fn python_interop() -> Result<(), Failed> {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    if Command::new("python3").arg("--version").output().is_err() {
        println!("note: python3 not found; interop test skipped");
        return Ok(());
    }
    // 1. Python attaches a segment we created, checks our bytes, writes its own.
    let ours = SharedMemory::create(None, 4096)?;
    ours.write(0, b"hello from rust")?;
    let script = "import sys\nfrom multiprocessing import shared_memory, resource_tracker\n\
        s = shared_memory.SharedMemory(name=sys.argv[1])\n\
        resource_tracker.unregister(s._name, 'shared_memory')\n\
        assert bytes(s.buf[:15]) == b'hello from rust', bytes(s.buf[:15])\n\
        s.buf[100:117] = b'hello from python'\n\
        print(s.size)\n\
        s.close()\n";
    let out = Command::new("python3")
        .args(["-c", script, ours.name()])
        .output()?;
    check!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check!(
        String::from_utf8_lossy(&out.stdout).trim() == "4096",
        "python saw size {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut back = [0u8; 17];
    ours.read(100, &mut back)?;
    check!(&back == b"hello from python", "python's bytes: {back:?}");
    ours.unlink()?;
    // 2. Python creates; we attach, compare, write; Python checks and unlinks.
    let script = "import sys\nfrom multiprocessing import shared_memory\n\
        s = shared_memory.SharedMemory(create=True, size=5000)\n\
        s.buf[:6] = b'py-own'\n\
        print(s.name, flush=True)\n\
        sys.stdin.readline()\n\
        assert bytes(s.buf[10:16]) == b'rs-own', bytes(s.buf[10:16])\n\
        s.close(); s.unlink()\n\
        print('ok', flush=True)\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
    let name = lines.next().ok_or("python printed no name")??;
    let theirs = SharedMemory::attach(&name)?;
    check!(theirs.size() >= 5000, "size {}", theirs.size());
    let mut six = [0u8; 6];
    theirs.read(0, &mut six)?;
    check!(&six == b"py-own", "python's bytes {six:?}");
    theirs.write(10, b"rs-own")?;
    child.stdin.take().ok_or("no stdin")?.write_all(b"go\n")?;
    let done = lines.next().ok_or("python printed no result")??;
    check!(
        child.wait()?.success() && done == "ok",
        "python saw: {done}"
    );
    Ok(())
}
