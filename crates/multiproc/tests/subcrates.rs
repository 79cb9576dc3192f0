//! Every re-export of the facade resolves to the layer's item (crossbeam's subcrates test).

#[test]
fn reexports() {
    let _: fn() = multiproc::init;
    let _: fn() -> usize = multiproc::cpu_count;
    let _ = multiproc::process::Process::name;
    let _ = multiproc::ipc::Connection::send_bytes;
    let _ = multiproc::sync::Lock::new;
    let _ = multiproc::Lock::acquire;
    let _ = multiproc::RLock::new;
    let _ = multiproc::Semaphore::get_value;
    let _ = multiproc::BoundedSemaphore::release;
    let _ = multiproc::Event::set;
    let _ = multiproc::Condition::new;
    let _ = multiproc::Barrier::new;
    let _ = multiproc::Value::<i32>::new;
    let _ = multiproc::Array::<f64>::zeroed;
    let _ = multiproc::RawValue::<u8>::new;
    let _ = multiproc::RawArray::<u8>::zeroed;
    let _ = multiproc::shm::Value::<u64>::get;
    let _ = multiproc::ShareableList::attach;
    let _ = multiproc::shm::Item::py_eq;
    let e: multiproc::Error = multiproc::sync::Error::NotHeld.into();
    assert!(e.to_string().contains("not held"));
    let _ = multiproc::Process::start;
    type Pair = Result<(multiproc::Connection, multiproc::Connection), multiproc::ipc::Error>;
    let _: fn() -> Pair = multiproc::pipe;
    let _: fn() -> Pair = multiproc::socketpair;
    let _: fn() -> Result<(multiproc::Reader, multiproc::Writer), multiproc::ipc::Error> =
        multiproc::simplex;
    let _ = multiproc::wait::<dyn multiproc::Waitable>;
    assert_eq!(
        multiproc::get_all_start_methods()[0],
        multiproc::DEFAULT_START_METHOD
    );
    assert_eq!(multiproc::current_process().name, "MainProcess");
    let e: multiproc::Error = multiproc::process::Error::NotStarted.into();
    assert!(e.to_string().contains("not started"));
    let e: multiproc::Error = multiproc::ipc::Error::Eof.into();
    assert!(!e.to_string().is_empty());
    let _ = multiproc::ProcessPoolExecutor::submit::<u32, u32>;
    let _ = multiproc::ProcessPoolExecutorBuilder::max_tasks_per_child;
    let _ = multiproc::Future::<u32>::cancel;
    let none: Vec<multiproc::Future<u32>> = Vec::new();
    assert_eq!(multiproc::as_completed(&none, None).count(), 0);
    let w = multiproc::futures::wait(&none, multiproc::WaitMode::AllCompleted, None);
    assert!(w.done.is_empty() && w.not_done.is_empty());
    let _ = multiproc::futures::DoneAndNotDone::<multiproc::futures::Future<u8>> {
        done: Vec::new(),
        not_done: Vec::new(),
    };
    assert_ne!(
        multiproc::WaitMode::FirstCompleted,
        multiproc::futures::WaitMode::AllCompleted
    );
    let _ = multiproc::Manager::start;
    let _ = multiproc::manager::Manager::number_of_objects;
    let _ = multiproc::SharedMemoryManager::start;
    let _ = multiproc::ManagerBuilder::serve;
    let _ = multiproc::DictProxy::<String, u32>::items;
    let _ = multiproc::ListProxy::<u8>::append;
    let _ = multiproc::NamespaceProxy::get::<u8>;
    let _ = multiproc::ValueProxy::<u8>::get;
    let _ = multiproc::ArrayProxy::<u8>::set;
    let _ = multiproc::QueueProxy::<u8>::put;
    let _ = multiproc::JoinableQueueProxy::<u8>::task_done;
    let _ = multiproc::LockProxy::acquire;
    let _ = multiproc::RLockProxy::release;
    let _ = multiproc::SemaphoreProxy::value;
    let _ = multiproc::BoundedSemaphoreProxy::value;
    let _ = multiproc::ConditionProxy::notify_all;
    let _ = multiproc::EventProxy::set;
    let _ = multiproc::BarrierProxy::wait;
    let e: multiproc::Error = multiproc::ManagerError::State("shut down").into();
    assert_eq!(e.to_string(), "the manager is shut down");
    assert!(matches!(
        multiproc::manager::RemoteErrorKind::KeyError
            .to_string()
            .as_str(),
        "KeyError"
    ));
    use multiproc::prelude::*;
    let _ = get_context(StartMethod::Spawn);
}
