//! Managers under every start method: every proxy operation, proxies in children, nested
//! proxies, reference counting (also when a proxy's holder is killed), remote managers over
//! TCP with an authkey, a killed server, registered types, no leftover processes.
//!
//! `harness = false`: one test thread, trials on the main thread, so fork is allowed. The
//! server of each test runs in its own process (a server in the test process would leave
//! threads behind that make later fork trials refuse). Children report failure through their
//! exit code (a failed assertion panics); waits have deadlines; no sleep orders anything.

use std::time::{Duration, Instant};

use multiproc_core::{FnRef, Process, StartMethod};
use multiproc_manager::{
    Address, BarrierProxy, ConditionProxy, DictProxy, EventProxy, JoinableQueueProxy, ListProxy,
    LockProxy, Manager, ManagerError, NamespaceProxy, QueueProxy, RemoteErrorKind as K,
    SemaphoreProxy, ValueProxy,
};
use multiproc_testkit::{Failed, LONG, TestFn, check, join_all, start};
use serde::{Deserialize, Serialize};

fn main() {
    let tests: &[(&str, TestFn)] = &[
        ("dict_operations", dict_operations),
        ("list_operations", list_operations),
        ("namespace_value_array", namespace_value_array),
        ("queues_across_processes", queues_across_processes),
        ("locks_semaphores_event", locks_semaphores_event),
        (
            "condition_and_barrier_across_processes",
            condition_and_barrier_across_processes,
        ),
        (
            "concurrent_increments_under_a_manager_lock",
            concurrent_increments_under_a_manager_lock,
        ),
        ("nested_proxies_from_a_child", nested_proxies_from_a_child),
        (
            "objects_dropped_after_the_last_proxy",
            objects_dropped_after_the_last_proxy,
        ),
        (
            "killed_holder_releases_its_proxies",
            killed_holder_releases_its_proxies,
        ),
        (
            "type_mismatch_is_refused_by_the_server",
            type_mismatch_is_refused_by_the_server,
        ),
        (
            "registered_type_and_unexposed_method",
            registered_type_and_unexposed_method,
        ),
        ("remote_manager_over_tcp", remote_manager_over_tcp),
        ("wrong_authkey_is_refused", wrong_authkey_is_refused),
        (
            "killed_server_fails_the_next_call_fast",
            killed_server_fails_the_next_call_fast,
        ),
        (
            "shutdown_and_drop_leave_no_process",
            shutdown_and_drop_leave_no_process,
        ),
        (
            "update_with_is_atomic_across_processes",
            update_with_is_atomic_across_processes,
        ),
        (
            "shared_memory_manager_unlinks_at_shutdown",
            shared_memory_manager_unlinks_at_shutdown,
        ),
        (
            "long_blocked_get_loses_nothing",
            long_blocked_get_loses_nothing,
        ),
        (
            "stalled_handshake_times_out_while_others_are_served",
            stalled_handshake_times_out_while_others_are_served,
        ),
        ("server_ignores_sigint", server_ignores_sigint),
        ("server_dies_with_its_parent", server_dies_with_its_parent),
        (
            "proxies_as_pool_task_arguments",
            proxies_as_pool_task_arguments,
        ),
    ];
    multiproc_testkit::run(multiproc_testkit::trials(tests))
}

fn mgr(m: StartMethod) -> Result<Manager, Failed> {
    Ok(Manager::builder().start_method(m).start()?)
}

fn kind(e: &ManagerError) -> Option<K> {
    e.remote_kind()
}

/// Whether a process with this pid exists (and is not a zombie of ours).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> Result<bool, Failed>) -> Result<(), Failed> {
    let deadline = Instant::now() + LONG;
    while !cond()? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

// ------------------------------------------------------------------------------ dict ------

fn dict_child(d: DictProxy<String, i64>) {
    assert_eq!(d.get("a").unwrap(), Some(10));
    d.set("child", &99).unwrap();
    d.remove("b").unwrap();
}

fn dict_operations(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let d = mgr.dict::<String, i64>()?;
    check!(d.is_empty()?, "new dict not empty");
    d.set("a", &1)?;
    check!(
        d.insert("b", &2)?.is_none(),
        "insert of a new key returned a value"
    );
    check!(
        d.insert("b", &3)? == Some(2),
        "insert did not return the old value"
    );
    check!(d.get("a")? == Some(1) && d.get("zz")?.is_none(), "get");
    check!(d.get_item("b")? == 3, "get_item");
    let e = d.get_item("zz").unwrap_err();
    check!(kind(&e) == Some(K::KeyError), "missing key: {e}");
    check!(d.contains_key("a")? && !d.contains_key("zz")?, "contains");
    check!(d.len()? == 2, "len");
    check!(d.keys()? == ["a", "b"], "keys in insertion order");
    check!(d.values()? == [1, 3], "values");
    d.update([("c".to_string(), 4), ("a".to_string(), 10)])?;
    check!(
        d.items()? == [("a".into(), 10), ("b".into(), 3), ("c".into(), 4)],
        "update keeps order: {:?}",
        d.items()?
    );
    check!(
        d.setdefault("c", &0)? == 4 && d.setdefault("d", &5)? == 5,
        "setdefault"
    );
    check!(d.pop("d")? == 5, "pop");
    check!(
        kind(&d.pop("d").unwrap_err()) == Some(K::KeyError),
        "pop of a missing key"
    );
    check!(d.remove("zz")?.is_none(), "remove missing");
    // A child sees the parent's entries and its changes are seen here.
    let p = start(m, dict_child, d.clone())?;
    join_all(&[p])?;
    check!(
        d.get("child")? == Some(99) && !d.contains_key("b")?,
        "child's changes"
    );
    let snapshot: Vec<(String, i64)> = d.iter()?.collect();
    check!(snapshot.len() == 3, "iter: {snapshot:?}");
    d.clear()?;
    check!(d.len()? == 0, "clear");
    let e = mgr.dict_from([(1u8, "x".to_string())])?;
    check!(e.get(&1)? == Some("x".to_string()), "dict_from");
    Ok(())
}

// ------------------------------------------------------------------------------ list ------

fn list_child(l: ListProxy<i32>) {
    l.append(&100).unwrap();
    assert_eq!(l.get(0).unwrap(), 5);
}

fn list_operations(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let l = mgr.list::<i32>()?;
    l.extend([5, 3, 8])?;
    l.append(&1)?;
    check!(l.len()? == 4 && l.get(-1)? == 1 && l.get(1)? == 3, "get");
    check!(
        kind(&l.get(10).unwrap_err()) == Some(K::IndexError),
        "index out of range"
    );
    l.set(1, &4)?;
    check!(
        kind(&l.set(-9, &0).unwrap_err()) == Some(K::IndexError),
        "set out of range"
    );
    l.insert(0, &7)?;
    l.insert(100, &9)?;
    check!(
        l.to_vec()? == [7, 5, 4, 8, 1, 9],
        "insert: {:?}",
        l.to_vec()?
    );
    check!(l.pop()? == 9 && l.pop_at(0)? == 7, "pop");
    check!(
        l.index(&8)? == 2 && kind(&l.index(&77).unwrap_err()) == Some(K::ValueError),
        "index"
    );
    l.append(&5)?;
    check!(
        l.count(&5)? == 2 && l.contains(&4)? && !l.contains(&77)?,
        "count/contains"
    );
    l.remove(&5)?;
    check!(
        kind(&l.remove(&77).unwrap_err()) == Some(K::ValueError),
        "remove missing"
    );
    check!(
        l.to_vec()? == [4, 8, 1, 5],
        "remove first: {:?}",
        l.to_vec()?
    );
    check!(
        l.range(1..3)? == [8, 1] && l.range(-2..)? == [1, 5] && l.range(-1..1)?.is_empty(),
        "range"
    );
    l.sort()?;
    check!(l.to_vec()? == [1, 4, 5, 8], "sort");
    let p = start(m, list_child, mgr.list_from([5, 6])?)?;
    join_all(&[p])?;
    let l2 = mgr.list_from([5, 6])?;
    let p = start(m, list_child, l2.clone())?;
    join_all(&[p])?;
    check!(l2.to_vec()? == [5, 6, 100], "child's append");
    l.clear()?;
    check!(l.is_empty()?, "clear");
    let empty = mgr.list::<u8>()?;
    check!(
        kind(&empty.pop().unwrap_err()) == Some(K::IndexError),
        "pop from empty"
    );
    Ok(())
}

// ----------------------------------------------------------------- namespace, value, array ------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Point {
    x: f64,
    y: f64,
}

fn ns_child((ns, v): (NamespaceProxy, ValueProxy<Point>)) {
    assert_eq!(ns.get::<String>("name").unwrap(), "Bob");
    ns.set("seen", &true).unwrap();
    v.set(&Point { x: 3.0, y: 4.0 }).unwrap();
}

fn namespace_value_array(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let ns = mgr.namespace()?;
    ns.set("name", &"Bob".to_string())?;
    ns.set("age", &42u32)?;
    check!(ns.get::<u32>("age")? == 42, "namespace get");
    let e = ns.get::<String>("age").unwrap_err();
    check!(kind(&e) == Some(K::TypeMismatch), "namespace type: {e}");
    check!(
        kind(&ns.get::<u32>("nope").unwrap_err()) == Some(K::AttributeError),
        "missing attr"
    );
    let v = mgr.value(&Point { x: 1.0, y: 2.0 })?;
    check!(v.get()? == Point { x: 1.0, y: 2.0 }, "value get");
    let p = start(m, ns_child, (ns.clone(), v.clone()))?;
    join_all(&[p])?;
    check!(ns.get::<bool>("seen")?, "child set a field");
    check!(
        ns.names()? == ["name", "age", "seen"],
        "names: {:?}",
        ns.names()?
    );
    ns.del("age")?;
    check!(
        kind(&ns.del("age").unwrap_err()) == Some(K::AttributeError),
        "del missing"
    );
    check!(v.get()? == Point { x: 3.0, y: 4.0 }, "child set the value");
    let a = mgr.array([1.5f64, 2.5, 3.5])?;
    a.set(-1, &9.0)?;
    check!(
        a.len()? == 3 && a.get(0)? == 1.5 && a.to_vec()? == [1.5, 2.5, 9.0],
        "array"
    );
    check!(
        kind(&a.get(3).unwrap_err()) == Some(K::IndexError),
        "array bound"
    );
    Ok(())
}

// ---------------------------------------------------------------------------- queues ------

fn queue_child((q, jq): (QueueProxy<String>, JoinableQueueProxy<u32>)) {
    for i in 0..10 {
        q.put(&format!("item {i}")).unwrap();
    }
    for _ in 0..5 {
        let _ = jq.get().unwrap();
        jq.task_done().unwrap();
    }
}

fn queues_across_processes(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let q = mgr.queue::<String>()?;
    let jq = mgr.joinable_queue::<u32>()?;
    for i in 0..5 {
        jq.put(&i)?;
    }
    check!(
        !jq.join_timeout(Duration::from_millis(10))?,
        "join before task_done"
    );
    let p = start(m, queue_child, (q.clone(), jq.clone()))?;
    for i in 0..10 {
        let item = q.get_timeout(LONG)?;
        check!(item == format!("item {i}"), "FIFO: {item}");
    }
    check!(jq.join_timeout(LONG)?, "join after the child's task_done");
    join_all(&[p])?;
    check!(
        kind(&jq.task_done().unwrap_err()) == Some(K::ValueError),
        "too many task_done"
    );
    check!(kind(&q.try_get().unwrap_err()) == Some(K::Empty), "empty");
    let t = Instant::now();
    check!(
        kind(&q.get_timeout(Duration::from_millis(50)).unwrap_err()) == Some(K::Empty),
        "timeout"
    );
    check!(
        t.elapsed() >= Duration::from_millis(50),
        "get_timeout returned early"
    );
    let b = mgr.queue_with_maxsize::<u8>(2)?;
    b.put(&1)?;
    b.try_put(&2)?;
    check!(b.full()? && b.qsize()? == 2 && b.maxsize()? == 2, "full");
    check!(
        kind(&b.try_put(&3).unwrap_err()) == Some(K::Full),
        "try_put on full"
    );
    check!(
        kind(&b.put_timeout(&3, Duration::from_millis(20)).unwrap_err()) == Some(K::Full),
        "put_timeout"
    );
    check!(b.get()? == 1 && !b.empty()?, "get after full");
    Ok(())
}

// --------------------------------------------------------------------- locks & co. ------

fn lock_holder((l, ev): (LockProxy, EventProxy)) {
    l.acquire().unwrap();
    ev.set().unwrap();
    // Holds the lock until killed.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn locks_semaphores_event(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let l = mgr.lock()?;
    {
        let _g = l.lock()?;
        check!(l.locked()? && !l.try_acquire()?, "held lock");
    }
    check!(!l.locked()?, "guard released");
    check!(
        kind(&l.release().unwrap_err()) == Some(K::RuntimeError),
        "release unlocked"
    );
    let r = mgr.rlock()?;
    r.acquire()?;
    check!(r.try_acquire()?, "rlock re-entry");
    r.release()?;
    r.release()?;
    check!(
        kind(&r.release().unwrap_err()) == Some(K::RuntimeError),
        "rlock over-release"
    );
    let s = mgr.semaphore(2)?;
    check!(
        s.try_acquire()? && s.try_acquire()? && !s.try_acquire()?,
        "semaphore count"
    );
    check!(
        !s.acquire_timeout(Duration::from_millis(20))?,
        "semaphore timeout"
    );
    s.release()?;
    s.release()?;
    s.release()?;
    check!(s.value()? == 3, "unbounded release");
    let b = mgr.bounded_semaphore(1)?;
    check!(
        kind(&b.release().unwrap_err()) == Some(K::ValueError),
        "bounded over-release"
    );
    // A lock held by a process that is killed is released by the server (beyond Python).
    let ev = mgr.event()?;
    check!(
        !ev.is_set()? && !ev.wait_timeout(Duration::from_millis(10))?,
        "event unset"
    );
    let p = start(m, lock_holder, (l.clone(), ev.clone()))?;
    ev.wait_timeout(LONG)?;
    check!(ev.is_set()?, "holder ready");
    check!(!l.try_acquire()?, "lock held by the child");
    p.kill()?;
    p.join()?;
    check!(
        l.acquire_timeout(LONG)?,
        "lock of a killed holder not released"
    );
    l.release()?;
    ev.clear()?;
    check!(!ev.is_set()?, "clear");
    Ok(())
}

fn cond_child((c, d, b): (ConditionProxy, DictProxy<String, u32>, BarrierProxy)) {
    let i = b.wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(i < 3);
    c.acquire().unwrap();
    d.set("ready", &(d.get("ready").unwrap().unwrap_or(0) + 1))
        .unwrap();
    c.notify_all().unwrap();
    let ok = c
        .wait_for(|| Ok(d.get("go")?.is_some()), Some(Duration::from_secs(60)))
        .unwrap();
    assert!(ok);
    c.release().unwrap();
}

fn condition_and_barrier_across_processes(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let c = mgr.condition()?;
    let d = mgr.dict::<String, u32>()?;
    let b = mgr.barrier(3)?;
    check!(
        b.parties()? == 3 && b.n_waiting()? == 0 && !b.broken()?,
        "barrier state"
    );
    check!(
        kind(&c.notify().unwrap_err()) == Some(K::RuntimeError),
        "notify un-acquired"
    );
    let ps = vec![
        start(m, cond_child, (c.clone(), d.clone(), b.clone()))?,
        start(m, cond_child, (c.clone(), d.clone(), b.clone()))?,
    ];
    b.wait_timeout(LONG)?;
    c.acquire()?;
    check!(
        c.wait_for(|| Ok(d.get("ready")? == Some(2)), Some(LONG))?,
        "children ready"
    );
    d.set("go", &1)?;
    c.notify_all()?;
    c.release()?;
    join_all(&ps)?;
    // A timeout breaks a barrier; reset mends it.
    let b2 = mgr.barrier(2)?;
    check!(
        kind(&b2.wait_timeout(Duration::from_millis(20)).unwrap_err()) == Some(K::BrokenBarrier),
        "timeout"
    );
    check!(b2.broken()?, "broken after timeout");
    b2.reset()?;
    check!(!b2.broken()?, "reset");
    b2.abort()?;
    check!(
        kind(&b2.wait().unwrap_err()) == Some(K::BrokenBarrier),
        "abort"
    );
    Ok(())
}

// ------------------------------------------------------------- concurrent increments ------

const INCREMENTS: u64 = 200;

fn incr_child((d, l): (DictProxy<String, u64>, LockProxy)) {
    for _ in 0..INCREMENTS {
        let _g = l.lock().unwrap();
        let n = d.get("n").unwrap().unwrap_or(0);
        d.set("n", &(n + 1)).unwrap();
    }
}

fn concurrent_increments_under_a_manager_lock(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let d = mgr.dict::<String, u64>()?;
    let l = mgr.lock()?;
    let ps: Vec<Process> = (0..4)
        .map(|_| start(m, incr_child, (d.clone(), l.clone())))
        .collect::<Result<_, _>>()?;
    join_all(&ps)?;
    let n = d.get("n")?;
    check!(
        n == Some(4 * INCREMENTS),
        "4 × {INCREMENTS} increments gave {n:?}"
    );
    Ok(())
}

fn add_one(v: Option<u64>) -> u64 {
    v.unwrap_or(0) + 1
}

fn update_child(d: DictProxy<String, u64>) {
    let f = FnRef::new(add_one).unwrap();
    for _ in 0..INCREMENTS {
        d.update_with("n", &f).unwrap();
    }
}

fn bump(v: u64) -> u64 {
    v * 2
}

fn update_with_is_atomic_across_processes(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let d = mgr.dict::<String, u64>()?;
    let ps: Vec<Process> = (0..3)
        .map(|_| start(m, update_child, d.clone()))
        .collect::<Result<_, _>>()?;
    join_all(&ps)?;
    check!(
        d.get("n")? == Some(3 * INCREMENTS),
        "update_with lost updates: {:?}",
        d.get("n")?
    );
    let v = mgr.value(&21u64)?;
    check!(
        v.update_with(&FnRef::new(bump)?)? == 42 && v.get()? == 42,
        "value update_with"
    );
    Ok(())
}

// ------------------------------------------------------------------- nested proxies ------

fn nested_child(d: DictProxy<String, ListProxy<String>>) {
    let l = d.get("inner").unwrap().expect("the nested list");
    assert_eq!(l.to_vec().unwrap(), ["parent"]);
    l.append(&"child".to_string()).unwrap();
}

fn nested_proxies_from_a_child(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let d = mgr.dict::<String, ListProxy<String>>()?;
    {
        let l = mgr.list::<String>()?;
        l.append(&"parent".to_string())?;
        d.set("inner", &l)?;
        // `l` is dropped here: the dict keeps the list alive.
    }
    let p = start(m, nested_child, d.clone())?;
    join_all(&[p])?;
    let l = d.get("inner")?.ok_or("nested list gone")?;
    check!(
        l.to_vec()? == ["parent", "child"],
        "nested list: {:?}",
        l.to_vec()?
    );
    Ok(())
}

// ------------------------------------------------------------- reference counting ------

fn objects_dropped_after_the_last_proxy(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    check!(mgr.number_of_objects()? == 0, "fresh server");
    let d = mgr.dict::<u8, u8>()?;
    let d2 = d.clone();
    let l = mgr.list::<u8>()?;
    check!(mgr.number_of_objects()? == 2, "two objects");
    drop(d);
    check!(
        mgr.number_of_objects()? == 2,
        "a clone still holds the dict"
    );
    drop(d2);
    drop(l);
    wait_until("the objects to be dropped", || {
        Ok(mgr.number_of_objects()? == 0)
    })?;
    // Stored inside a dict: kept while stored, dropped when removed.
    let outer = mgr.dict::<String, ListProxy<u8>>()?;
    outer.set("x", &mgr.list::<u8>()?)?;
    check!(mgr.number_of_objects()? == 2, "stored list kept");
    outer.remove("x")?;
    wait_until("the removed list to be dropped", || {
        Ok(mgr.number_of_objects()? == 1)
    })?;
    Ok(())
}

fn holder(q: (QueueProxy<u8>, EventProxy)) {
    let (q, ev) = q;
    let _mine = q.clone();
    ev.set().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn killed_holder_releases_its_proxies(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let ev = mgr.event()?;
    let p = {
        let q = mgr.queue::<u8>()?;
        let p = start(m, holder, (q, ev.clone()))?;
        check!(ev.wait_timeout(LONG)?, "holder ready");
        p
    };
    // The parent dropped its queue proxy; the child still holds one.
    check!(mgr.number_of_objects()? == 2, "queue kept by the child");
    p.kill()?;
    p.join()?;
    wait_until("the killed holder's queue to be dropped", || {
        Ok(mgr.number_of_objects()? == 1)
    })?;
    Ok(())
}

fn mismatch_child(d: DictProxy<String, String>) {
    let _ = d;
}

fn type_mismatch_is_refused_by_the_server(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let d = mgr.dict::<String, u64>()?;
    mgr.publish("counts", &d)?;
    let e = mgr.get::<DictProxy<String, String>>("counts").unwrap_err();
    check!(
        kind(&e) == Some(K::TypeMismatch),
        "lookup with other types: {e}"
    );
    check!(
        e.to_string().contains("u64"),
        "message names the types: {e}"
    );
    let ok = mgr.get::<DictProxy<String, u64>>("counts")?;
    ok.set("a", &1)?;
    check!(d.get("a")? == Some(1), "same object");
    let e = mgr.get::<DictProxy<String, u64>>("nobody").unwrap_err();
    check!(kind(&e) == Some(K::NoSuchName), "unknown name: {e}");
    // A proxy decoded as other types in a child fails there (the child cannot start).
    let bytes = postcard::to_allocvec(&d)?;
    let wrong: Result<DictProxy<String, String>, _> = postcard::from_bytes(&bytes);
    check!(wrong.is_err(), "decoded as other types");
    let _ = mismatch_child;
    Ok(())
}

// ------------------------------------------------------------------- registered type ------

/// A registered type.
#[derive(Debug, Serialize, Deserialize)]
pub struct Counter {
    n: u64,
    log: Vec<String>,
}

impl Counter {
    fn add(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
    fn get(&self) -> u64 {
        self.n
    }
    fn note(&mut self, what: String) {
        self.log.push(what);
    }
    fn checked_sub(&mut self, by: u64) -> Result<u64, String> {
        let n = self
            .n
            .checked_sub(by)
            .ok_or_else(|| format!("{} - {by} underflows", self.n))?;
        self.n = n;
        Ok(n)
    }
    #[allow(dead_code)]
    fn secret(&self) -> u64 {
        7
    }
}

multiproc_manager::managed! {
    /// A counter held by a manager.
    pub proxy CounterProxy for Counter {
        fn add(by: u64) -> u64;
        fn get() -> u64;
        fn note(what: String);
        fn checked_sub(by: u64) -> Result<u64, String>;
    }
}

fn counter_child(c: CounterProxy) {
    for _ in 0..10 {
        c.add(1).unwrap();
    }
    c.note("child".into()).unwrap();
}

fn registered_type_and_unexposed_method(m: StartMethod) -> Result<(), Failed> {
    let mgr = Manager::builder()
        .start_method(m)
        .register::<Counter>()?
        .start()?;
    let c: CounterProxy = mgr.create(Counter { n: 5, log: vec![] })?;
    check!(c.add(2)? == 7 && c.get()? == 7, "methods");
    let ps = vec![
        start(m, counter_child, c.clone())?,
        start(m, counter_child, c.clone())?,
    ];
    join_all(&ps)?;
    check!(c.get()? == 27, "children's adds: {}", c.get()?);
    check!(
        c.checked_sub(100)? == Err("27 - 100 underflows".to_string()),
        "typed E"
    );
    let copy = c.get_value()?;
    check!(copy.log == ["child", "child"], "get_value: {copy:?}");
    use multiproc_manager::Proxy;
    let e = c.object().__method::<_, u64>("secret", &()).unwrap_err();
    check!(kind(&e) == Some(K::NotExposed), "unexposed method: {e}");
    // A type that was not registered is refused.
    let plain = mgr_plain(m)?;
    let e = plain.create(Counter { n: 0, log: vec![] }).unwrap_err();
    check!(kind(&e) == Some(K::NotExposed), "unregistered type: {e}");
    Ok(())
}

fn mgr_plain(m: StartMethod) -> Result<Manager, Failed> {
    mgr(m)
}

// ------------------------------------------------------------------------- remote ------

const KEY: &[u8] = b"remote manager secret";

fn remote_server((ready, m): (multiproc_testkit::End, StartMethod)) {
    let _ = m;
    let mgr = Manager::builder()
        .address("127.0.0.1:0".parse::<Address>().unwrap())
        .authkey(KEY)
        .serve()
        .unwrap();
    let q = mgr.queue::<String>().unwrap();
    mgr.publish("queue", &q).unwrap();
    ready.send(&mgr.address().to_string());
    mgr.join().unwrap();
}

fn remote_putter(address: String) {
    let mgr = Manager::connect(address.parse::<Address>().unwrap(), KEY).unwrap();
    let q: QueueProxy<String> = mgr.get("queue").unwrap();
    for i in 0..5 {
        q.put(&format!("msg {i}")).unwrap();
    }
}

fn remote_getter((address, out): (String, multiproc_testkit::End)) {
    let mgr = Manager::connect(address.parse::<Address>().unwrap(), KEY).unwrap();
    let q: QueueProxy<String> = mgr.get("queue").unwrap();
    let got: Vec<String> = (0..5)
        .map(|_| q.get_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    out.send(&got.join(","));
}

fn remote_manager_over_tcp(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = multiproc_testkit::End::pair();
    let server = start(m, remote_server, (w, m))?;
    let address = r.line()?;
    check!(address.starts_with("127.0.0.1:"), "address {address}");
    // A client that stalls mid-handshake does not stop others from being served.
    let _stalled = std::net::TcpStream::connect(&address)?;
    let (r2, w2) = multiproc_testkit::End::pair();
    let getter = start(m, remote_getter, (address.clone(), w2))?;
    let putter = start(m, remote_putter, address.clone())?;
    let got = r2.line()?;
    check!(
        got == "msg 0,msg 1,msg 2,msg 3,msg 4",
        "remote queue: {got}"
    );
    join_all(&[getter, putter])?;
    // Shut the server down from here, then restart on the same port at once.
    let mgr = Manager::connect(address.parse::<Address>()?, KEY)?;
    mgr.get::<QueueProxy<String>>("queue")?.put(&"x".into())?;
    drop(mgr);
    server.terminate()?;
    server.join()?;
    let again = Manager::builder()
        .address(address.parse::<Address>()?)
        .authkey(KEY)
        .start_method(m)
        .start()?;
    check!(again.address().to_string() == address, "same address");
    let d = again.dict::<u8, u8>()?;
    d.set(&1, &2)?;
    Ok(())
}

fn wrong_authkey_is_refused(m: StartMethod) -> Result<(), Failed> {
    let mgr = Manager::builder()
        .address("127.0.0.1:0".parse::<Address>().unwrap())
        .authkey(KEY)
        .start_method(m)
        .start()?;
    let e = Manager::connect(mgr.address().clone(), b"wrong key").unwrap_err();
    check!(
        matches!(
            e,
            ManagerError::Connection(multiproc_manager::IpcError::Authentication(_))
        ),
        "wrong key: {e}"
    );
    let d = mgr.dict::<u8, u8>()?;
    {
        let ok = Manager::connect(mgr.address().clone(), KEY)?;
        check!(ok.number_of_objects()? == 1, "right key works");
        // Dropping a connected manager leaves the server and this process's proxies alone.
    }
    d.set(&1, &1)?;
    check!(mgr.number_of_objects()? == 1, "owner still works");
    Ok(())
}

// ----------------------------------------------------------------- death and shutdown ------

fn killed_server_fails_the_next_call_fast(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let d = mgr.dict::<u8, u8>()?;
    d.set(&1, &1)?;
    let q = mgr.queue::<u8>()?;
    let pid = mgr.pid().ok_or("no server pid")?;
    // A call blocked in the server when it dies fails too.
    let blocked = std::thread::spawn(move || q.get());
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).ok_or("pid")?,
        rustix::process::Signal::KILL,
    )?;
    mgr.join_timeout(LONG)?;
    let t = Instant::now();
    let e = d.get(&1).unwrap_err();
    check!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    check!(matches!(e, ManagerError::ServerGone { .. }), "error: {e}");
    check!(e.to_string().contains("gone"), "message: {e}");
    let r = blocked.join().map_err(|_| "blocked thread panicked")?;
    check!(
        matches!(r, Err(ManagerError::ServerGone { .. })),
        "blocked call: {r:?}"
    );
    Ok(())
}

fn shutdown_and_drop_leave_no_process(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let pid = mgr.pid().ok_or("pid")?;
    let d = mgr.dict::<u8, u8>()?;
    check!(alive(pid), "server running");
    mgr.shutdown()?;
    mgr.shutdown()?; // idempotent
    check!(!alive(pid), "server {pid} left after shutdown");
    let e = d.get(&1).unwrap_err();
    check!(
        matches!(e, ManagerError::ServerGone { .. }),
        "after shutdown: {e}"
    );
    let pid = {
        let mgr = self::mgr(m)?;
        mgr.pid().ok_or("pid")?
    };
    check!(!alive(pid), "server {pid} left after drop");
    let _unused: Option<SemaphoreProxy> = None;
    Ok(())
}

// ------------------------------------------------------------ shared memory manager ------

fn smm_child((shm_name, list_name): (String, String)) {
    let shm = multiproc_shm::SharedMemory::attach(&shm_name).unwrap();
    shm.write(0, b"child").unwrap();
    let list = multiproc_shm::ShareableList::attach(&list_name).unwrap();
    list.set(0, 42i64).unwrap();
}

fn in_dev_shm(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

fn shared_memory_manager_unlinks_at_shutdown(m: StartMethod) -> Result<(), Failed> {
    let smm =
        multiproc_manager::SharedMemoryManager::start_with(Manager::builder().start_method(m))?;
    let shm = smm.shared_memory(4096)?;
    let list = smm.shareable_list([1i64, 2, 3])?;
    let names = (shm.name().to_string(), list.name().to_string());
    check!(
        in_dev_shm(&names.0) && in_dev_shm(&names.1),
        "segments exist"
    );
    let mut tracked = smm.segments()?;
    tracked.sort();
    let mut expected = vec![names.0.clone(), names.1.clone()];
    expected.sort();
    check!(tracked == expected, "tracked: {tracked:?}");
    let p = start(m, smm_child, names.clone())?;
    join_all(&[p])?;
    let mut buf = [0u8; 5];
    shm.read(0, &mut buf)?;
    check!(
        &buf == b"child" && list.get(0)?.as_int() == Some(42),
        "child's writes"
    );
    // Released segments stay; the others go at shutdown.
    let kept = smm.shared_memory(64)?;
    smm.release(kept.name())?;
    smm.shutdown()?;
    check!(
        !in_dev_shm(&names.0) && !in_dev_shm(&names.1),
        "segments left after shutdown"
    );
    check!(in_dev_shm(kept.name()), "released segment unlinked");
    kept.unlink()?;
    // Dropping the manager does the same.
    let name = {
        let smm =
            multiproc_manager::SharedMemoryManager::start_with(Manager::builder().start_method(m))?;
        let s = smm.shared_memory(64)?;
        s.name().to_string()
    };
    check!(!in_dev_shm(&name), "segment left after drop");
    Ok(())
}

// ------------------------------------------------------------------ long waits ------

fn late_putter(q: QueueProxy<String>) {
    // Not an ordering device: whatever the timing, both items must arrive, in order. The
    // pause only makes the parent's `get` outlast the sleeping sides' check interval.
    std::thread::sleep(Duration::from_millis(400));
    q.put(&"a".to_string()).unwrap();
    q.put(&"b".to_string()).unwrap();
}

fn long_blocked_get_loses_nothing(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let q = mgr.queue::<String>()?;
    let p = start(m, late_putter, q.clone())?;
    let first = q.get_timeout(LONG)?;
    let second = q.get_timeout(LONG)?;
    join_all(&[p])?;
    check!(
        first == "a" && second == "b",
        "got {first:?} then {second:?}"
    );
    check!(q.qsize()? == 0, "left: {}", q.qsize()?);
    Ok(())
}

// ------------------------------------------------------ handshake, signals, parents ------

fn stalled_handshake_times_out_while_others_are_served(m: StartMethod) -> Result<(), Failed> {
    use std::io::Read;
    let mgr = Manager::builder()
        .address("127.0.0.1:0".parse::<Address>()?)
        .authkey(KEY)
        .handshake_timeout(Duration::from_millis(300))
        .start_method(m)
        .start()?;
    let Address::Tcp(addr) = mgr.address().clone() else {
        return Err("not a TCP address".into());
    };
    let t = Instant::now();
    let mut stalled = std::net::TcpStream::connect(addr)?;
    stalled.set_read_timeout(Some(LONG))?;
    // Meanwhile another client is served.
    let other = Manager::connect(mgr.address().clone(), KEY)?;
    check!(other.number_of_objects()? == 0, "other client served");
    // The server sent its challenge, got no answer, and closed the connection.
    let mut got = Vec::new();
    stalled.read_to_end(&mut got)?;
    check!(!got.is_empty(), "no challenge sent");
    check!(
        t.elapsed() >= Duration::from_millis(300),
        "closed early: {:?}",
        t.elapsed()
    );
    Ok(())
}

fn server_ignores_sigint(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let d = mgr.dict::<u8, u8>()?;
    let pid = mgr.pid().ok_or("pid")?;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).ok_or("pid")?,
        rustix::process::Signal::INT,
    )?;
    d.set(&1, &2)?;
    check!(d.get(&1)? == Some(2) && alive(pid), "server after SIGINT");
    Ok(())
}

fn manager_owner(out: multiproc_testkit::End) {
    let mgr = Manager::start().unwrap();
    out.send(&mgr.pid().unwrap().to_string());
    // Until killed.
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn server_dies_with_its_parent(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = multiproc_testkit::End::pair();
    let owner = start(m, manager_owner, w)?;
    let pid: u32 = r.line()?.parse()?;
    check!(alive(pid), "server running");
    owner.kill()?;
    owner.join()?;
    wait_until("the server of a killed owner to end", || Ok(!alive(pid)))?;
    Ok(())
}

fn pool_task(a: (ListProxy<u32>, u32)) -> u32 {
    a.0.append(&a.1).unwrap();
    a.1
}

fn proxies_as_pool_task_arguments(m: StartMethod) -> Result<(), Failed> {
    let mgr = mgr(m)?;
    let l = mgr.list::<u32>()?;
    {
        let pool = multiproc_pool::Pool::builder()
            .processes(2)
            .start_method(m)
            .build()?;
        let out = pool.map(pool_task, (0..20).map(|i| (l.clone(), i)))?;
        check!(out == (0..20).collect::<Vec<_>>(), "results");
    }
    let mut got = l.to_vec()?;
    got.sort();
    check!(
        got == (0..20).collect::<Vec<_>>(),
        "appended by the pool: {got:?}"
    );
    Ok(())
}
