//! Ten processes fill a manager dict with the characters of `"WeThinkIn!"`, each mapped to its
//! index, under the `fork` start method (seed `000`, "进程间维护全局数据").
//!
//! ```python
//! # 进程间维护全局数据
//! import time
//! from multiprocessing import Process, Queue, set_start_method
//!
//! def runner(global_dict, pool_id):
//!     temp = "WeThinkIn!"
//!     global_dict[temp[pool_id]] = pool_id
//!
//! if __name__ == "__main__":
//!
//!     # mac默认启动进程的方式是fork
//!     set_start_method("fork")
//!
//!     # queue = Queue()
//!     manager = Manager()
//!     global_dict = manager.dict()
//!     # global_list = manager.list()
//!
//!     process_list = []
//!     pool_size = 10
//!     for pool_id in range(pool_size):
//!
//!         # 实例化进程对象
//!         p = Process(target=runner, args=(global_dict, pool_id,))
//!
//!         # 启动进程
//!         p.start()
//!         time.sleep(1)
//!         process_list.append(p)
//!
//!     # 等待全部进程执行完毕
//!     for i in process_list:
//!         p.join()
//!
//!     print("############")
//!     print(global_dict)
//! ```
//!
//! It prints `{'W': 0, 'e': 1, 'T': 2, 'h': 3, 'i': 4, 'n': 8, 'k': 6, 'I': 7, '!': 9}`:
//! `'n'` occurs twice (indices 5 and 8), so the dict has nine keys, `'n'` keeps the place
//! where process 5 inserted it, and holds 8 because process 8 wrote last.
//!
//! That output depends on the order of the writes, which Python's snippet fixes with
//! `time.sleep(1)` after each `start` (ten seconds, and still only a timing assumption).
//! Sorting the dict when printing would not be enough: which of processes 5 and 8 writes `'n'`
//! last is a race. Here all ten processes are started at once, and each waits for its turn on
//! a manager `Condition` guarding a manager `Value` (the index of the process whose turn it
//! is): the writes happen in index order for certain, with no sleep, and the output is
//! Python's exactly. The snippet's `import` of `Manager` is missing (added here), and its join
//! loop joins the last process ten times (`p.join()` instead of `i.join()`); every process is
//! joined here.
// expect: ############
// expect: {'W': 0, 'e': 1, 'T': 2, 'h': 3, 'i': 4, 'n': 8, 'k': 6, 'I': 7, '!': 9}
// expect-lines: 2

use multiproc::{ConditionProxy, DictProxy, Manager, Process, StartMethod, ValueProxy};

const TEMP: &str = "WeThinkIn!";

type Args = (
    DictProxy<String, usize>,
    usize,
    ValueProxy<usize>,
    ConditionProxy,
);

fn runner((global_dict, pool_id, turn, cond): Args) {
    let c = TEMP.chars().nth(pool_id).expect("pool_id < len(temp)");
    cond.acquire().unwrap();
    // Wait until the processes before this one have written.
    cond.wait_for(|| Ok(turn.get()? == pool_id), None).unwrap();
    global_dict.set(&c.to_string(), &pool_id).unwrap();
    turn.set(&(pool_id + 1)).unwrap();
    cond.notify_all().unwrap();
    cond.release().unwrap();
}

/// The dict as Python prints a `dict` of one-character `str` keys and `int` values.
fn py_dict(items: &[(String, usize)]) -> String {
    let items: Vec<String> = items
        .iter()
        .map(|(k, v)| {
            let k = if k == "'" {
                "\"'\"".to_string()
            } else {
                format!("'{k}'")
            };
            format!("{k}: {v}")
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn main() -> multiproc::Result<()> {
    multiproc::init();
    multiproc::set_start_method(StartMethod::Fork)?;
    let manager = Manager::start()?;
    let global_dict = manager.dict::<String, usize>()?;
    let turn = manager.value(&0usize)?;
    let cond = manager.condition()?;

    let pool_size = TEMP.chars().count();
    let mut process_list = Vec::new();
    for pool_id in 0..pool_size {
        let mut p = Process::new(
            runner,
            (global_dict.clone(), pool_id, turn.clone(), cond.clone()),
        );
        p.start()?;
        process_list.push(p);
    }
    for p in &process_list {
        assert_eq!(p.join()?, 0);
    }

    println!("############");
    println!("{}", py_dict(&global_dict.items()?));
    manager.shutdown()?;
    Ok(())
}
