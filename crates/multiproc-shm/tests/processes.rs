//! Shared values and arrays across real processes, every test under fork, spawn and
//! forkserver (`harness = false`: one test thread, trials on the main thread).

use std::time::Duration;

use std::path::Path;
use std::time::Instant;

use multiproc_core::{Process, StartMethod, get_context};
use multiproc_shm::{
    AnyLock, Array, Error, Item, RawArray, RawValue, ShareableList, SharedMemory, Value,
    shareable_list,
};
use multiproc_sync::Event;
use multiproc_testkit::{Failed, LONG, TestFn, Trial, check, join, join_all, start, start_daemon};

fn main() {
    let tests: &[(&str, TestFn)] = &[
        ("array_seed_ends_at_1001", array_seed_ends_at_1001),
        (
            "value_counter_with_lock_reaches_4000",
            value_counter_with_lock_reaches_4000,
        ),
        ("value_with_a_caller_lock", value_with_a_caller_lock),
        (
            "value_and_array_share_one_lock",
            value_and_array_share_one_lock,
        ),
        (
            "issue_6_lock_reports_a_dead_owner",
            issue_6_lock_reports_a_dead_owner,
        ),
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
        (
            "fork_child_does_not_keep_the_tracker_pipe",
            fork_child_does_not_keep_the_tracker_pipe,
        ),
        (
            "untracked_segment_outlives_its_killed_creator",
            untracked_segment_outlives_its_killed_creator,
        ),
        (
            "tracker_removes_a_segment_after_a_normal_exit",
            tracker_removes_a_segment_after_a_normal_exit,
        ),
        (
            "issue_6_try_clone_hands_one_segment_to_several_children",
            issue_6_try_clone_hands_one_segment_to_several_children,
        ),
        (
            "shareable_list_child_attaches_by_name_and_changes_items",
            shareable_list_child_attaches_by_name_and_changes_items,
        ),
        (
            "shareable_list_handed_to_children",
            shareable_list_handed_to_children,
        ),
    ];
    let mut trials = multiproc_testkit::trials(tests);
    trials.push(Trial::test("shared_memory_errors", shared_memory_errors));
    trials.push(Trial::test(
        "shareable_list_python_example_layout",
        shareable_list_python_example_layout,
    ));
    trials.push(Trial::test(
        "shareable_list_methods",
        shareable_list_methods,
    ));
    trials.push(Trial::test("shareable_list_errors", shareable_list_errors));
    trials.push(Trial::test(
        "shareable_list_attach_refuses_corrupt_blocks",
        shareable_list_attach_refuses_corrupt_blocks,
    ));
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
    let lock = AnyLock::new_lock()?;
    let pair = Array::from_slice_with_lock(&[1000i64, 0], lock.clone())?;
    let v = Value::with_lock(7u8, lock.clone())?;
    check!(!v.get_lock().is_reentrant(), "lock kind");
    let ps: Vec<Process> = (0..3)
        .map(|_| start(m, transfer, pair.clone()))
        .collect::<Result<_, _>>()?;
    join_all(&ps)?;
    check!(pair.to_vec() == [-500, 1500], "pair {:?}", pair.to_vec());
    check!(v.get() == 7, "value {}", v.get());
    Ok(())
}

/// Holds `a`'s lock (through its guard) from `held` until `go`, then writes 42.
fn hold_value_lock((a, held, go): (Value<u32>, Event, Event)) {
    let mut g = a.lock();
    held.set();
    assert!(go.wait_timeout(LONG), "never told to release");
    *g = 42;
}

/// A child holds the lock of `Value` A; `Array` B, built with the same lock, cannot be locked
/// by the parent until the child releases it (for both kinds of lock).
fn value_and_array_share_one_lock(m: StartMethod) -> Result<(), Failed> {
    for lock in [AnyLock::new_rlock()?, AnyLock::new_lock()?] {
        let a = Value::with_lock(0u32, lock.clone())?;
        let b = Array::<u8>::zeroed_with_lock(3, lock)?;
        check!(
            b.try_lock().is_some() && a.try_lock().is_some(),
            "free before the child"
        );
        let (held, go) = (Event::new()?, Event::new()?);
        let p = start_daemon(m, hold_value_lock, (a.clone(), held.clone(), go.clone()))?;
        check!(held.wait_timeout(LONG), "the child never took the lock");
        let blocked = b.try_lock().is_none()
            && b.get_lock().try_acquire().is_none()
            && b.get_lock().is_locked()
            && b.lock_timeout(Duration::from_millis(50)).is_none();
        go.set();
        check!(blocked, "B's lock was free while the child held A's");
        check!(join(&p)? == 0, "child failed");
        let g = b.try_lock();
        check!(
            g.as_ref().is_some_and(|g| g.owner_died().is_none()),
            "B still locked"
        );
        drop(g);
        check!(a.get() == 42, "A {}", a.get());
    }
    Ok(())
}

/// Writes 41 under the lock, says so, and hangs holding it until killed.
fn lock_and_hang((v, held): (Value<u64>, Event)) {
    let mut g = v.lock();
    *g = 41;
    held.set();
    std::thread::sleep(Duration::from_secs(3600));
    drop(g);
}

/// Starts a child that writes 41 into `v` under its lock and is killed holding it; its pid.
fn kill_while_locked(m: StartMethod, v: &Value<u64>) -> Result<u32, Failed> {
    let held = Event::new()?;
    let p = start_daemon(m, lock_and_hang, (v.clone(), held.clone()))?;
    check!(held.wait_timeout(LONG), "the child never took the lock");
    let pid = p.pid().ok_or("no pid")?;
    check!(v.try_lock().is_none(), "not held by the child");
    p.kill()?;
    check!(p.join_timeout(LONG)? == Some(-9), "child not killed");
    Ok(pid)
}

/// A child locks a `Value` and is killed; the parent's `lock()` takes the lock over and its
/// guard reports the dead owner (Python's `Value` would hang). Then the same through the
/// data-less `get_lock().acquire()`, inside which `get`/`set` work: the dead child's guard is
/// recognised as gone, not as a guard of this thread.
fn issue_6_lock_reports_a_dead_owner(m: StartMethod) -> Result<(), Failed> {
    let v = Value::new(0u64)?;
    let pid = kill_while_locked(m, &v)?;
    let mut g = v.lock_timeout(LONG).ok_or("lock not taken over")?;
    check!(
        g.owner_died() == Some(pid),
        "owner_died {:?} not {pid}",
        g.owner_died()
    );
    check!(*g == 41, "value {}", *g);
    *g += 1;
    drop(g);
    let g = v.lock();
    check!(
        g.owner_died().is_none() && *g == 42,
        "after recovery: {:?}",
        g.owner_died()
    );
    drop(g);

    let w = Value::new(0u64)?;
    let pid = kill_while_locked(m, &w)?;
    let held = w
        .get_lock()
        .acquire_timeout(LONG)
        .ok_or("lock not taken over")?;
    check!(
        held.owner_died() == Some(pid),
        "acquire: owner_died {:?}",
        held.owner_died()
    );
    w.set(w.get() + 1);
    drop(held);
    check!(
        w.get() == 42 && !w.get_lock().is_locked(),
        "value {}",
        w.get()
    );
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
        !Path::new(&format!("/dev/shm/{name}")).exists(),
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
fn create_and_hang((name, ready): (String, Event)) {
    let shm = SharedMemory::create(Some(&name), 8192).unwrap();
    std::mem::forget(shm);
    ready.set();
    std::thread::sleep(Duration::from_secs(3600));
}

fn killed_creator_segment_is_removed(m: StartMethod) -> Result<(), Failed> {
    let name = unique("killed", m);
    let path = format!("/dev/shm/{name}");
    let ready = Event::new()?;
    let mut p = get_context(m).process(create_and_hang, (name.clone(), ready.clone()));
    p.set_daemon(true)?;
    p.start()?;
    check!(ready.wait_timeout(LONG), "the creator never got ready");
    check!(Path::new(&path).exists(), "segment not created");
    p.kill()?;
    check!(p.join_timeout(LONG)? == Some(-9), "creator not killed");
    // The creator's tracker sees its pipe close and unlinks: poll for the effect.
    wait_until_gone(&path)
}

/// Creates a tracked segment, forks a child (which sleeps, holding whatever it inherited),
/// says so with the fork child's pid, and sleeps without unlinking.
fn create_fork_and_hang((name, ready, fork_pid): (String, Event, RawValue<u32>)) {
    let shm = SharedMemory::create(Some(&name), 8192).unwrap();
    std::mem::forget(shm);
    let mut f = get_context(StartMethod::Fork).process(|_: ()| sleep_long(), ());
    f.start().unwrap();
    fork_pid.set(f.pid().unwrap());
    ready.set();
    sleep_long();
}

fn sleep_long() {
    std::thread::sleep(Duration::from_secs(3600));
}

/// A fork child of a creator must not hold the creator's tracker pipe (§1b.6): the segment of
/// a killed creator is removed while its fork child still runs.
fn fork_child_does_not_keep_the_tracker_pipe(m: StartMethod) -> Result<(), Failed> {
    let name = unique("forkkeeps", m);
    let path = format!("/dev/shm/{name}");
    let ready = Event::new()?;
    let fork_pid = RawValue::new(0u32)?;
    let mut p = get_context(m).process(
        create_fork_and_hang,
        (name.clone(), ready.clone(), fork_pid.clone()),
    );
    // Not a daemon: a daemon may not start the fork child.
    p.start()?;
    if !ready.wait_timeout(LONG) {
        p.kill()?;
        return Err("the creator never got ready".into());
    }
    let pid = rustix::process::Pid::from_raw(fork_pid.get() as i32).ok_or("no fork pid")?;
    // Hold the fork child by pidfd, so it is killed at the end however this test ends.
    let grandchild = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    struct KillOnDrop(std::os::fd::OwnedFd);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = rustix::process::pidfd_send_signal(&self.0, rustix::process::Signal::KILL);
        }
    }
    let grandchild = KillOnDrop(grandchild);
    check!(Path::new(&path).exists(), "segment not created");
    p.kill()?;
    check!(p.join_timeout(LONG)? == Some(-9), "creator not killed");
    wait_until_gone(&path)?;
    let mut fds = [rustix::event::PollFd::new(
        &grandchild.0,
        rustix::event::PollFlags::IN,
    )];
    check!(
        rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default()))? == 0,
        "the fork child ended before the segment was removed"
    );
    Ok(())
}

/// Polls (the tracker is another process, with nothing to wait on) until `path` is gone.
fn wait_until_gone(path: &str) -> Result<(), Failed> {
    let deadline = Instant::now() + LONG;
    while Path::new(path).exists() {
        check!(Instant::now() < deadline, "{path} still there");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Creates `untracked` (writing a mark) then `tracked`, says so, hangs until killed.
fn create_both_and_hang((untracked, tracked, ready): (String, String, Event)) {
    let u = SharedMemory::create_untracked(Some(&untracked), 4096).unwrap();
    u.write(0, b"survivor").unwrap();
    let t = SharedMemory::create(Some(&tracked), 4096).unwrap();
    ready.set();
    std::thread::sleep(Duration::from_secs(3600));
    drop((u, t));
}

/// A killed creator's tracker removes its tracked segment but not its untracked one, which a
/// later process can still attach (Python 3.13's `track=False`).
fn untracked_segment_outlives_its_killed_creator(m: StartMethod) -> Result<(), Failed> {
    let (untracked, tracked) = (unique("untracked", m), unique("tracked", m));
    let ready = Event::new()?;
    let p = start_daemon(
        m,
        create_both_and_hang,
        (untracked.clone(), tracked.clone(), ready.clone()),
    )?;
    check!(ready.wait_timeout(LONG), "the creator never got ready");
    p.kill()?;
    check!(p.join_timeout(LONG)? == Some(-9), "creator not killed");
    // The tracker unlinks what was registered, in order, once it sees end-of-file: when the
    // tracked segment (created second) is gone, it is done.
    wait_until_gone(&format!("/dev/shm/{tracked}"))?;
    let u = SharedMemory::attach(&untracked);
    check!(u.is_ok(), "untracked segment removed: {:?}", u.err());
    let u = u?;
    let mut mark = [0u8; 8];
    u.read(0, &mut mark)?;
    u.unlink()?;
    check!(&mark == b"survivor", "bytes {mark:?}");
    Ok(())
}

/// Creates a tracked segment, says so, waits for `go`, and returns without unlinking it.
fn create_and_return((name, made, go): (String, Event, Event)) {
    let shm = SharedMemory::create(Some(&name), 4096).unwrap();
    made.set();
    assert!(go.wait_timeout(LONG), "never told to return");
    drop(shm); // closes; does not unlink
}

/// A creator that exits normally without `unlink`: its tracker removes the segment (Python
/// warns "leaked shared_memory objects" and unlinks them).
fn tracker_removes_a_segment_after_a_normal_exit(m: StartMethod) -> Result<(), Failed> {
    let name = unique("leaked", m);
    let path = format!("/dev/shm/{name}");
    let (made, go) = (Event::new()?, Event::new()?);
    let p = start_daemon(
        m,
        create_and_return,
        (name.clone(), made.clone(), go.clone()),
    )?;
    check!(made.wait_timeout(LONG), "the creator never created");
    let existed = Path::new(&path).exists();
    go.set();
    check!(join(&p)? == 0, "creator failed");
    check!(existed, "segment not created");
    wait_until_gone(&path)
}

/// Writes byte `i + 1` over its 4 KiB slot `i` of the segment, after checking the parent's mark.
fn fill_slot((shm, i): (SharedMemory, u8)) {
    let mut mark = [0u8; 4];
    shm.read(3 * 4096, &mut mark).unwrap();
    assert_eq!(&mark, b"mark");
    shm.write(usize::from(i) * 4096, &[i + 1; 4096]).unwrap();
}

/// One segment handed to three children through `try_clone` while the parent keeps (and
/// reads through) its own handle.
fn issue_6_try_clone_hands_one_segment_to_several_children(m: StartMethod) -> Result<(), Failed> {
    let shm = SharedMemory::create(None, 4 * 4096)?;
    shm.write(3 * 4096, b"mark")?;
    let ps: Vec<Process> = (0..3u8)
        .map(|i| start(m, fill_slot, (shm.try_clone()?, i)))
        .collect::<Result<_, _>>()?;
    join_all(&ps)?;
    let mut clone = shm.try_clone()?;
    check!(
        clone.name() == shm.name() && clone.size() == shm.size(),
        "{clone:?}"
    );
    clone.close();
    check!(
        matches!(clone.try_clone(), Err(Error::Closed)),
        "clone of a closed handle"
    );
    let mut all = vec![0u8; 3 * 4096];
    shm.read(0, &mut all)?;
    shm.unlink()?;
    for (i, slot) in all.chunks(4096).enumerate() {
        check!(
            slot.iter().all(|&b| usize::from(b) == i + 1),
            "slot {i} not written"
        );
    }
    Ok(())
}

fn shared_memory_errors() -> Result<(), Failed> {
    let name = format!("mp_test_{}_errors", std::process::id());
    let shm = SharedMemory::create(Some(&format!("/{name}")), 10)?;
    check!(
        shm.name() == name,
        "one leading / is left out: {}",
        shm.name()
    );
    check!(
        matches!(SharedMemory::create(Some(&name), 10), Err(Error::Exists(n)) if n == name),
        "create existing"
    );
    check!(
        matches!(SharedMemory::create(None, 0), Err(Error::InvalidSize)),
        "size 0"
    );
    check!(
        matches!(
            SharedMemory::attach("mp_test_no_such_segment"),
            Err(Error::NotFound(n)) if n == "mp_test_no_such_segment"
        ),
        "attach missing"
    );
    // issue 6 §1b.8: "//x" named "/x", "." and ".." an OS error.
    for bad in [
        "",
        "/",
        "//x",
        "a/b",
        ".",
        "..",
        "/.",
        "/..",
        "nul\0",
        &"x".repeat(251),
    ] {
        check!(
            matches!(SharedMemory::create(Some(bad), 10), Err(Error::InvalidName(n)) if n == bad),
            "create {bad:?}"
        );
        check!(
            matches!(SharedMemory::attach(bad), Err(Error::InvalidName(n)) if n == bad),
            "attach {bad:?}"
        );
    }
    let out_of_range = |r: Result<(), Error>, o: usize, l: usize| matches!(r, Err(Error::OutOfRange { offset, len, size: 10 }) if offset == o && len == l);
    let mut buf = [0u8; 4];
    check!(
        out_of_range(shm.write(8, &[0; 4]), 8, 4),
        "write past the end"
    );
    check!(
        out_of_range(shm.read(7, &mut buf), 7, 4),
        "read past the end"
    );
    check!(
        out_of_range(shm.read(11, &mut []), 11, 0),
        "empty read past the end"
    );
    check!(
        out_of_range(shm.read(usize::MAX, &mut buf[..1]), usize::MAX, 1),
        "read at usize::MAX"
    );
    check!(
        out_of_range(shm.write(usize::MAX - 1, &[0; 4]), usize::MAX - 1, 4),
        "write overflowing usize"
    );
    shm.write(6, &[1, 2, 3, 4])?;
    shm.read(6, &mut buf)?;
    check!(
        buf == [1, 2, 3, 4] && shm.read(10, &mut []).is_ok(),
        "edges"
    );
    let mut closed = shm.try_clone()?;
    closed.close();
    check!(
        matches!(closed.write(0, &[1]), Err(Error::Closed)),
        "write after close"
    );
    shm.unlink()?;
    check!(
        matches!(shm.unlink(), Err(Error::NotFound(n)) if n == name),
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

/// The items of the cross-process `ShareableList` tests: every type, a 16-byte str slot.
fn list_items() -> Vec<Item> {
    vec![
        Item::Int(7),
        Item::Float(-0.5),
        "fifteen chars!!".into(),
        b"raw".into(),
        Item::None,
        Item::Bool(false),
    ]
}

/// Attaches by name, checks the parent's items, changes five of them.
fn change_list_items(name: String) {
    let sl = ShareableList::attach(&name).unwrap();
    assert_eq!(sl.to_vec().unwrap(), list_items());
    assert_eq!(sl.format().unwrap(), "qd16s8sxxxxxx?xxxxxxxx?");
    sl.set(0, 2.25).unwrap(); // int -> float
    sl.set(1, "in 8").unwrap(); // float -> str (an 8-byte slot)
    sl.set(2, "short").unwrap(); // a shorter str
    sl.set(3, Item::None).unwrap(); // bytes -> None
    sl.set(4, 99i64).unwrap(); // None -> int
    assert!(matches!(
        sl.set(2, "x".repeat(17)),
        Err(Error::ExceedsStorage {
            index: 2,
            len: 17,
            available: 16
        })
    ));
}

fn expect_changed(sl: &ShareableList) -> Result<(), Failed> {
    let want = vec![
        Item::Float(2.25),
        "in 8".into(),
        "short".into(),
        Item::None,
        Item::Int(99),
        Item::Bool(false),
    ];
    let got = sl.to_vec()?;
    check!(got == want, "items {got:?}");
    let format = sl.format()?;
    check!(
        format == "d8s16sxxxxxx?xqxxxxxxx?",
        "format after the child: {format}"
    );
    Ok(())
}

/// A child attaches by name (Python's `ShareableList(name=...)`), changes items, and the
/// parent sees the changes and the new formats.
fn shareable_list_child_attaches_by_name_and_changes_items(m: StartMethod) -> Result<(), Failed> {
    let sl = ShareableList::with_name(&unique("slist", m), list_items())?;
    let p = start(m, change_list_items, sl.name().to_string())?;
    join_all(&[p])?;
    expect_changed(&sl)?;
    sl.unlink()?;
    check!(
        !Path::new(&format!("/dev/shm/{}", sl.name())).exists(),
        "name left after unlink"
    );
    Ok(())
}

/// Sets item `i` to `i * 10` in the list it was handed (serde: fd and name).
fn set_own_item((sl, i): (ShareableList, u8)) {
    assert_eq!(sl.len(), 3);
    sl.set(usize::from(i), i64::from(i) * 10).unwrap();
}

/// A `ShareableList` handed to children as a process argument (Python pickles it by name).
fn shareable_list_handed_to_children(m: StartMethod) -> Result<(), Failed> {
    let sl = ShareableList::new([Item::None, Item::None, Item::None])?;
    let ps: Vec<Process> = (0..3u8)
        .map(|i| start(m, set_own_item, (sl.try_clone()?, i)))
        .collect::<Result<_, _>>()?;
    join_all(&ps)?;
    let got = sl.to_vec()?;
    check!(
        got == [Item::Int(0), Item::Int(10), Item::Int(20)],
        "items {got:?}"
    );
    check!(sl.format()? == "qqq", "format {}", sl.format()?);
    sl.unlink()?;
    Ok(())
}

/// PYTHON-REFERENCE §2.5's verified example, through a real block.
fn shareable_list_python_example_layout() -> Result<(), Failed> {
    let items = [
        Item::Int(1),
        Item::Float(2.5),
        "ab".into(),
        b"xy".into(),
        Item::None,
        Item::Bool(true),
    ];
    let sl = ShareableList::new(items.clone())?;
    check!(sl.name().starts_with("psm_"), "name {}", sl.name());
    check!(
        sl.format()? == "qd8s8sxxxxxx?xxxxxxxx?",
        "format {}",
        sl.format()?
    );
    check!(sl.shm().size() == 166, "size {}", sl.shm().size());
    let mut head = [0u8; 8];
    sl.shm().read(0, &mut head)?;
    check!(head == [6, 0, 0, 0, 0, 0, 0, 0], "first 8 bytes {head:?}");
    check!(sl.len() == 6 && !sl.is_empty(), "len {}", sl.len());
    check!(sl.to_vec()? == items, "items {:?}", sl.to_vec()?);
    sl.unlink()?;
    Ok(())
}

fn shareable_list_methods() -> Result<(), Failed> {
    let sl = ShareableList::new([
        Item::from(3),
        Item::from(3.0),
        Item::from(true),
        Item::from("héllo wörld"),
        Item::from(b"a\0b\0\0".as_slice()),
        Item::from(()),
        Item::from(Some("x")),
        Item::from(None::<i64>),
    ])?;
    let same = ShareableList::attach(sl.name())?;
    check!(same.len() == 8, "attached len {}", same.len());
    check!(
        sl.get(3)? == Item::Str("héllo wörld".into()),
        "str {:?}",
        sl.get(3)?
    );
    // Trailing NULs go, inner ones stay (Python's rstrip).
    check!(
        sl.get(4)? == Item::Bytes(b"a\0b".to_vec()),
        "bytes {:?}",
        sl.get(4)?
    );
    check!(
        sl.format()? == "qdxxxxxxx?16s8sxxxxxx?x8sxxxxxx?x",
        "format {}",
        sl.format()?
    );
    // Python's ==: 3 == 3.0, 1 == True; None twice.
    check!(sl.count(&Item::Int(3))? == 2, "count 3");
    check!(sl.count(&Item::Float(1.0))? == 1, "count 1.0");
    check!(sl.count(&Item::None)? == 2, "count None");
    check!(sl.count(&Item::Str("y".into()))? == 0, "count 'y'");
    check!(sl.index(&Item::Float(3.0))? == 0, "index 3.0");
    check!(sl.index(&Item::None)? == 5, "index None");
    check!(sl.index(&"x".into())? == 6, "index 'x'");
    match sl.index(&Item::Bytes(b"x".to_vec())) {
        Err(Error::NotInList(item)) => check!(
            item == Item::Bytes(b"x".to_vec())
                && Error::NotInList(item).to_string() == "b'x' not in this container",
            "message"
        ),
        other => return Err(format!("index of b'x': {other:?}").into()),
    }
    // Type changes through the other handle, seen here.
    same.set(0, "8 bytes!")?; // a str of exactly the slot's size
    same.set(1, false)?;
    same.set(2, Item::None)?;
    same.set(3, 1.5)?; // a 16-byte str slot holding a float
    same.set(5, -1)?;
    same.set(7, b"\xff\xfe".as_slice())?;
    check!(
        sl.format()? == "8sxxxxxxx?xxxxxx?xd8sq8s8s",
        "format {}",
        sl.format()?
    );
    let got: Vec<Item> = sl.iter().collect::<Result<_, _>>()?;
    let want = [
        Item::Str("8 bytes!".into()),
        Item::Bool(false),
        Item::None,
        Item::Float(1.5),
        Item::Bytes(b"a\0b".to_vec()),
        Item::Int(-1),
        "x".into(),
        Item::Bytes(vec![0xff, 0xfe]),
    ];
    check!(got == want, "items {got:?}");
    check!(sl.to_vec()? == want, "to_vec {:?}", sl.to_vec()?);
    // The 16-byte slot takes a str of 16 bytes again (format from the slot, not the float).
    sl.set(3, "sixteen bytes!!!")?;
    check!(
        same.get(3)? == Item::Str("sixteen bytes!!!".into()),
        "{:?}",
        same.get(3)?
    );
    check!(
        same.format()? == "8sxxxxxxx?xxxxxx?x16s8sq8s8s",
        "format {}",
        same.format()?
    );
    check!(format!("{sl:?}").contains(sl.name()), "{sl:?}");
    // An empty list: 16 bytes.
    let empty = ShareableList::new(Vec::<Item>::new())?;
    check!(
        empty.is_empty() && empty.shm().size() == 16 && empty.format()?.is_empty(),
        "{empty:?}"
    );
    check!(
        ShareableList::attach(empty.name())?.is_empty(),
        "attached empty"
    );
    empty.unlink()?;
    let name = sl.name().to_string();
    sl.unlink()?;
    check!(
        !Path::new(&format!("/dev/shm/{name}")).exists(),
        "name left after unlink"
    );
    check!(
        matches!(ShareableList::attach(&name), Err(Error::NotFound(_))),
        "attach after unlink"
    );
    // The handles still map the block.
    check!(same.get(6)? == "x".into(), "after unlink");
    Ok(())
}

fn shareable_list_errors() -> Result<(), Failed> {
    let sl = ShareableList::new([Item::from("abc"), Item::Int(1)])?;
    let too_long = sl.set(0, "123456789");
    check!(
        matches!(
            &too_long,
            Err(Error::ExceedsStorage {
                index: 0,
                len: 9,
                available: 8
            })
        ),
        "{too_long:?}"
    );
    check!(
        too_long.unwrap_err().to_string() == "bytes/str item exceeds available storage",
        "Python's message"
    );
    check!(
        matches!(
            sl.set(1, vec![0u8; 9]),
            Err(Error::ExceedsStorage { index: 1, .. })
        ),
        "bytes into an int's slot"
    );
    // UTF-8 length counts: 5 two-byte characters do not fit 8 bytes.
    check!(
        matches!(
            sl.set(0, "ééééé"),
            Err(Error::ExceedsStorage { len: 10, .. })
        ),
        "utf-8 length"
    );
    check!(
        sl.get(0)? == "abc".into() && sl.format()? == "8sq",
        "a refused set wrote nothing"
    );
    check!(
        matches!(sl.get(2), Err(Error::IndexOutOfRange { index: 2, len: 2 })),
        "get past the end"
    );
    check!(
        matches!(
            sl.set(usize::MAX, 1),
            Err(Error::IndexOutOfRange { len: 2, .. })
        ),
        "set past the end"
    );
    check!(
        matches!(
            ShareableList::with_name(sl.name(), [1]),
            Err(Error::Exists(_))
        ),
        "with_name of an existing block"
    );
    check!(
        matches!(
            ShareableList::new([Item::Bytes(vec![0; shareable_list::MAX_ITEM_LEN + 1])]),
            Err(Error::ExceedsStorage { .. })
        ),
        "an item too large for a format string"
    );
    sl.unlink()?;
    Ok(())
}

/// A block with these bytes (zero beyond them), attached as a list.
fn attach_bytes(
    tag: &str,
    size: usize,
    bytes: &[u8],
) -> Result<Result<ShareableList, Error>, Failed> {
    let name = format!("mp_test_{}_corrupt_{tag}", std::process::id());
    let shm = SharedMemory::create(Some(&name), size)?;
    shm.write(0, bytes)?;
    let attached = ShareableList::attach(&name);
    shm.unlink()?;
    Ok(attached)
}

fn words(ws: &[i64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// Foreign or corrupt blocks are refused with `Error::InvalidList` (never a panic or a read
/// past the block); an item corrupted after attaching is an error of `get`/`to_vec`.
fn shareable_list_attach_refuses_corrupt_blocks() -> Result<(), Failed> {
    // A valid one-item list (an int), for reference: count, offsets, slot, format, code.
    let mut good = words(&[1, 0, 8, 5]);
    good.extend_from_slice(b"q\0\0\0\0\0\0\0");
    good.push(0);
    check!(
        attach_bytes("good", good.len(), &good)?
            .map(|l| l.get(0).ok())
            .ok()
            == Some(Some(Item::Int(5))),
        "the reference block"
    );
    let with = |at: usize, bytes: &[u8]| {
        let mut b = good.clone();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    };
    let cases: Vec<(&str, usize, Vec<u8>, &str)> = vec![
        ("tiny", 8, vec![0; 8], "fewer than"),
        ("negative", 4096, words(&[-1]), "item count of -1"),
        ("huge", 4096, words(&[1 << 40]), "does not fit"),
        ("allff", 4096, vec![0xff; 4096], "item count of -1"),
        (
            "first",
            good.len(),
            with(8, &8i64.to_ne_bytes()),
            "offset 0",
        ),
        (
            "unaligned",
            good.len(),
            with(16, &7i64.to_ne_bytes()),
            "offset 1",
        ),
        ("past", good.len(), with(16, &16i64.to_ne_bytes()), "needs"),
        ("format", good.len(), with(32, b"zz"), "invalid format"),
        (
            "wide",
            good.len(),
            with(32, b"16s"),
            "does not fit its slot",
        ),
        ("code", good.len(), with(40, &[4]), "unknown type code 4"),
        (
            "short",
            good.len() - 1,
            good.clone(),
            "does not fit in 40 bytes",
        ),
    ];
    for (tag, size, bytes, why) in cases {
        let bytes = &bytes[..bytes.len().min(size)];
        match attach_bytes(tag, size, bytes)? {
            Err(Error::InvalidList { reason, .. }) => {
                check!(reason.contains(why), "{tag}: reason {reason:?}")
            }
            other => return Err(format!("{tag}: {other:?}").into()),
        }
    }
    // Corrupted after attaching: a code, a format, a str that is not UTF-8.
    let sl = ShareableList::new([Item::Int(1), "ok".into()])?;
    let (formats, codes) = (16 + 8 + 8 + 16, 16 + 8 + 8 + 16 + 16);
    sl.shm().write(codes, &[9])?;
    check!(
        matches!(&sl.get(0), Err(Error::InvalidList { reason, .. }) if reason.contains("unknown type code 9")),
        "bad code {:?}",
        sl.get(0)
    );
    check!(
        sl.to_vec().is_err() && sl.count(&Item::Int(1)).is_err(),
        "to_vec"
    );
    sl.shm().write(codes, &[0])?;
    sl.shm().write(formats, b"99s")?;
    check!(
        matches!(sl.get(0), Err(Error::InvalidList { .. })) && sl.format().is_err(),
        "bad format"
    );
    sl.shm().write(formats, b"q\0\0")?;
    sl.shm().write(16 + 8 + 8 + 8, b"\xff")?;
    check!(
        matches!(&sl.get(1), Err(Error::InvalidList { reason, .. }) if reason.contains("UTF-8")),
        "bad str {:?}",
        sl.get(1)
    );
    check!(sl.get(0)? == Item::Int(1), "the other item");
    sl.set(1, "ok")?;
    check!(sl.get(1)? == "ok".into(), "repaired");
    sl.unlink()?;
    Ok(())
}
