//! Shared values and arrays across real processes, every test under fork, spawn and
//! forkserver (`harness = false`: one test thread, trials on the main thread).

use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use multiproc_core::{Process, StartMethod, get_context};
use multiproc_shm::{AnyLock, Array, RawArray, RawValue, Value};
use multiproc_sync::Lock;

const METHODS: [StartMethod; 3] = [
    StartMethod::Fork,
    StartMethod::Spawn,
    StartMethod::Forkserver,
];
const LONG: Duration = Duration::from_secs(60);

type TestFn = fn(StartMethod) -> Result<(), Failed>;

fn main() {
    multiproc_core::init();
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
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
    ];
    let mut trials = Vec::new();
    for &(name, test) in tests {
        for method in METHODS {
            trials.push(Trial::test(format!("{name}::{method}"), move || {
                test(method)
            }));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*).into());
        }
    };
}

fn start<A>(m: StartMethod, f: fn(A), a: A) -> Result<Process, Failed>
where
    A: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let mut p = get_context(m).process(f, a);
    p.start()?;
    Ok(p)
}

fn join_all(ps: &[Process]) -> Result<(), Failed> {
    for p in ps {
        match p.join_timeout(LONG)? {
            Some(0) => {}
            Some(code) => return Err(format!("{} exited with {code}", p.name()).into()),
            None => {
                p.kill()?;
                return Err(format!("{} did not exit", p.name()).into());
            }
        }
    }
    Ok(())
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
