//! Exit codes as Python reports them: 0 on return, n after `exit(n)`, 1 after a panic, -N
//! after signal N; `join_timeout` on a sleeping child; `terminate` and `kill`.
//!
//! ```python
//! p = Process(target=time.sleep, args=(1000,)); p.start()
//! p.join(0.1); print(p.is_alive())   # True
//! p.terminate(); p.join(); print(p.exitcode)   # -15
//! ```
// expect: returned: 0
// expect: exit(3): 3
// expect: panicked: 1
// expect: alive after join_timeout: true
// expect: terminated: -15
// expect: killed: -9

use std::time::Duration;

use multiproc::Process;

fn sleeper(_: ()) {
    std::thread::sleep(Duration::from_secs(1000));
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    let run = |p: &mut Process| -> multiproc::Result<i32> {
        p.start()?;
        Ok(p.join()?)
    };
    println!("returned: {}", run(&mut Process::new(|_: ()| {}, ()))?);
    println!(
        "exit(3): {}",
        run(&mut Process::new(|c: i32| std::process::exit(c), 3))?
    );
    println!(
        "panicked: {}",
        run(&mut Process::new(
            |_: ()| panic!("expected: this child panics on purpose"),
            ()
        ))?
    );

    let mut p = Process::new(sleeper, ());
    p.start()?;
    assert_eq!(p.join_timeout(Duration::from_millis(100))?, None);
    println!("alive after join_timeout: {}", p.is_alive());
    p.terminate()?;
    println!("terminated: {}", p.join()?);

    let mut p = Process::new(sleeper, ());
    p.start()?;
    p.kill()?;
    println!("killed: {}", p.join()?);
    Ok(())
}
