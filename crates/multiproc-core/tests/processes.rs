//! Process behaviour across real process boundaries, every test under every start method.
//!
//! A `harness = false` binary: libtest-mimic with one test thread runs every trial on the main
//! thread, so the process is single-threaded and the fork method is allowed.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use multiproc_core::{CallError, Error, FnRef, Process, StartMethod, get_context, reduction};
use multiproc_testkit::{End, Failed, LONG, METHODS, TestFn, Trial, check, join, start};
use serde::{Deserialize, Serialize};

fn main() {
    // A copy of this binary, or an unrelated run of it, asked to decode a function reference.
    if let Ok(hex) = std::env::var("MULTIPROC_TEST_DECODE_FNREF") {
        decode_fnref_and_exit(&hex);
    }
    let tests: &[(&str, TestFn)] = &[
        ("fnref_round_trip_in_child", fnref_round_trip_in_child),
        (
            "after_fork_hooks_run_in_fork_children",
            after_fork_hooks_run_in_fork_children,
        ),
        (
            "daemon_outlives_the_thread_that_started_it",
            daemon_outlives_the_thread_that_started_it,
        ),
        ("process_handle_methods", process_handle_methods),
        (
            "grandchild_sees_its_parent_die",
            grandchild_sees_its_parent_die,
        ),
        (
            "parent_process_carried_over_a_fork",
            parent_process_carried_over_a_fork,
        ),
        ("exit_code_return_is_0", exit_code_return_is_0),
        ("exit_code_exit_3", exit_code_exit_3),
        (
            "exit_code_panic_is_1_with_message",
            exit_code_panic_is_1_with_message,
        ),
        ("exit_code_kill_is_minus_9", exit_code_kill_is_minus_9),
        (
            "exit_code_terminate_is_minus_15",
            exit_code_terminate_is_minus_15,
        ),
        (
            "join_timeout_returns_while_alive",
            join_timeout_returns_while_alive,
        ),
        (
            "child_sees_identity_and_parent",
            child_sees_identity_and_parent,
        ),
        ("handle_fd_travels_both_ways", handle_fd_travels_both_ways),
        ("struct_with_run_method", struct_with_run_method),
        (
            "start_twice_and_join_before_start_are_errors",
            start_twice_and_join_before_start_are_errors,
        ),
        ("daemon_cannot_start_children", daemon_cannot_start_children),
        ("grandchild_names_and_reaping", grandchild_names_and_reaping),
        (
            "daemon_children_gone_after_parent_exits",
            daemon_children_gone_after_parent_exits,
        ),
        (
            "daemon_children_die_with_killed_parent",
            daemon_children_die_with_killed_parent,
        ),
        ("no_zombie_after_join", no_zombie_after_join),
        (
            "active_children_reaps_finished",
            active_children_reaps_finished,
        ),
        ("sentinel_becomes_readable", sentinel_becomes_readable),
        ("close_rules", close_rules),
        ("no_fd_leak_after_1000_cycles", no_fd_leak_after_1000_cycles),
        ("many_concurrent_children", many_concurrent_children),
        ("child_inherits_only_its_fds", child_inherits_only_its_fds),
        ("shared_heap_is_shared", shared_heap_is_shared),
        (
            "child_inherits_start_method_and_cwd",
            child_inherits_start_method_and_cwd,
        ),
        ("child_stdin_is_dev_null", child_stdin_is_dev_null),
        (
            "parent_stdout_flushed_before_start",
            parent_stdout_flushed_before_start,
        ),
        (
            "exit_joins_children_and_terminates_daemons",
            exit_joins_children_and_terminates_daemons,
        ),
    ];
    let mut trials = multiproc_testkit::trials(tests);
    trials.push(Trial::test("start_method_settings", start_method_settings));
    trials.push(Trial::test(
        "fork_refused_with_threads",
        fork_refused_with_threads,
    ));
    trials.push(Trial::test(
        "current_process_in_main",
        current_process_in_main,
    ));
    trials.push(Trial::test(
        "forkserver_death_is_an_error_then_restarts",
        forkserver_death_is_an_error_then_restarts,
    ));
    trials.push(Trial::test(
        "forkserver_spares_killed_or_orphaned",
        forkserver_spares_killed_or_orphaned,
    ));
    trials.push(Trial::test(
        "forkserver_without_fds_is_an_error_then_works",
        forkserver_without_fds_is_an_error_then_works,
    ));
    for method in [StartMethod::Forkserver, StartMethod::Spawn] {
        trials.push(Trial::test(
            format!("starts_from_four_threads_at_once::{method}"),
            move || starts_from_four_threads_at_once(method),
        ));
    }
    for method in METHODS {
        trials.push(Trial::test(
            format!("too_many_fds_is_an_error::{method}"),
            move || too_many_fds_is_an_error(method),
        ));
    }
    trials.push(Trial::test(
        "helpers_are_not_children",
        helpers_are_not_children,
    ));
    trials.push(Trial::test(
        "fnref_from_another_executable_or_tree_is_refused",
        fnref_from_another_executable_or_tree_is_refused,
    ));
    // Only a fork child inherits the parent's arena; under spawn and forkserver there is no
    // copy that could alias.
    trials.push(Trial::test(
        "child_allocations_do_not_alias_the_parents::fork",
        || child_allocations_do_not_alias_the_parents(StartMethod::Fork),
    ));
    trials.push(Trial::test(
        "fork_allowed_beside_library_threads",
        fork_allowed_beside_library_threads,
    ));
    trials.push(Trial::test(
        "untrackable_child_is_killed_and_reaped",
        untrackable_child_is_killed_and_reaped,
    ));
    trials.push(Trial::test(
        "children_of_a_program_that_ignores_sigchld",
        children_of_a_program_that_ignores_sigchld,
    ));
    trials.push(Trial::test(
        "daemon_ignoring_sigterm_is_killed_at_exit",
        daemon_ignoring_sigterm_is_killed_at_exit,
    ));
    trials.push(Trial::test(
        "fork_children_never_block_on_core_locks",
        fork_children_never_block_on_core_locks,
    ));
    multiproc_testkit::run(trials);
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn exit_code_return_is_0(m: StartMethod) -> Result<(), Failed> {
    let p = start(m, |x: u32| assert_eq!(x, 5), 5)?;
    check!(join(&p)? == 0, "exit code {:?}", p.exitcode());
    check!(p.exitcode() == Some(0), "exitcode() {:?}", p.exitcode());
    check!(!p.is_alive(), "alive after join");
    Ok(())
}

fn exit_code_exit_3(m: StartMethod) -> Result<(), Failed> {
    let p = start(m, |code: i32| std::process::exit(code), 3)?;
    check!(join(&p)? == 3, "exit code {:?}", p.exitcode());
    Ok(())
}

fn panic_with_stderr(w: End) {
    rustix::stdio::dup2_stderr(&w.0).unwrap();
    drop(w);
    panic!("boom from the child");
}

fn exit_code_panic_is_1_with_message(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let p = start(m, panic_with_stderr, w)?;
    let code = join(&p)?;
    let text = r.lines(usize::MAX)?.join("\n");
    check!(code == 1, "exit code {code}");
    check!(
        text.contains(&format!("Process {}:", p.name())),
        "no process name in stderr: {text:?}"
    );
    check!(
        text.contains("boom from the child"),
        "no panic message in stderr: {text:?}"
    );
    check!(
        text.contains("processes.rs"),
        "no panic location in stderr: {text:?}"
    );
    Ok(())
}

fn started_then_ready(m: StartMethod) -> Result<Process, Failed> {
    fn announce_then_sleep(w: End) {
        w.send("ready");
        drop(w);
        sleep_forever(());
    }
    let (r, w) = End::pair();
    // A daemon: should a check fail before the test kills it, the exit handler stops it
    // instead of waiting forever.
    let mut p = get_context(m).process(announce_then_sleep, w);
    p.set_daemon(true)?;
    p.start()?;
    check!(r.lines(1)? == ["ready"], "child did not announce itself");
    Ok(p)
}

fn exit_code_kill_is_minus_9(m: StartMethod) -> Result<(), Failed> {
    let p = started_then_ready(m)?;
    check!(p.is_alive(), "not alive before kill");
    p.kill()?;
    check!(join(&p)? == -9, "exit code {:?}", p.exitcode());
    p.kill()?; // a no-op once reaped
    Ok(())
}

fn exit_code_terminate_is_minus_15(m: StartMethod) -> Result<(), Failed> {
    let p = started_then_ready(m)?;
    p.terminate()?;
    check!(join(&p)? == -15, "exit code {:?}", p.exitcode());
    Ok(())
}

fn join_timeout_returns_while_alive(m: StartMethod) -> Result<(), Failed> {
    let p = started_then_ready(m)?;
    let t = Instant::now();
    let r = p.join_timeout(Duration::from_millis(200))?;
    let took = t.elapsed();
    check!(
        r.is_none(),
        "join_timeout returned {r:?} for a sleeping child"
    );
    check!(
        took >= Duration::from_millis(200),
        "returned early after {took:?}"
    );
    check!(
        took < Duration::from_secs(20),
        "returned late after {took:?}"
    );
    check!(
        p.is_alive() && p.exitcode().is_none(),
        "child not alive after the timeout"
    );
    check!(
        p.join_timeout(Duration::ZERO)?.is_none(),
        "join_timeout(0) waited or reported exit"
    );
    p.kill()?;
    join(&p)?;
    Ok(())
}

fn report_identity(w: End) {
    let me = multiproc_core::current_process();
    let parent = multiproc_core::parent_process().expect("a child has a parent");
    w.send(&me.name);
    w.send(&me.pid.to_string());
    w.send(&parent.pid().to_string());
    w.send(parent.name());
    w.send(&format!("{:?}", me.authkey));
    w.send(&format!("{:?}", me.start_method));
    w.send(&parent.is_alive().to_string());
    w.send(&std::process::id().to_string());
}

fn child_sees_identity_and_parent(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let p = start(m, report_identity, w)?;
    let lines = r.lines(8)?;
    join(&p)?;
    let me = multiproc_core::current_process();
    check!(lines.len() == 8, "got {lines:?}");
    check!(
        lines[0] == p.name(),
        "child name {} vs {}",
        lines[0],
        p.name()
    );
    check!(
        lines[1] == p.pid().unwrap().to_string(),
        "child pid {} vs {:?}",
        lines[1],
        p.pid()
    );
    check!(
        lines[2] == std::process::id().to_string(),
        "parent pid seen {} vs {}",
        lines[2],
        std::process::id()
    );
    check!(lines[3] == "MainProcess", "parent name {}", lines[3]);
    check!(
        lines[4] == format!("{:?}", me.authkey),
        "authkey not inherited"
    );
    check!(
        lines[5] == format!("{:?}", Some(m)),
        "start method {}",
        lines[5]
    );
    check!(lines[6] == "true", "parent not alive from the child");
    check!(lines[7] == lines[1], "os pid {} vs {}", lines[7], lines[1]);
    Ok(())
}

/// Two pipes, one each way: the child echoes one line upper-cased.
fn echo_upper((r, w): (End, End)) {
    let line = r.lines(1).unwrap().remove(0);
    w.send(&line.to_uppercase());
}

fn handle_fd_travels_both_ways(m: StartMethod) -> Result<(), Failed> {
    let (to_child_r, to_child_w) = End::pair();
    let (from_child_r, from_child_w) = End::pair();
    let p = start(m, echo_upper, (to_child_r, from_child_w))?;
    to_child_w.send("hello child");
    drop(to_child_w);
    check!(from_child_r.lines(1)? == ["HELLO CHILD"], "echo mismatch");
    check!(join(&p)? == 0, "echo child failed");
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Job {
    label: String,
    out: End,
}

impl Job {
    fn run(self) {
        self.out.send(&format!("test process {}", self.label));
    }
}

fn struct_with_run_method(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let mut ps = Vec::new();
    for i in 0..10 {
        let out = End(w.0.try_clone()?);
        ps.push(start(
            m,
            Job::run,
            Job {
                label: i.to_string(),
                out,
            },
        )?);
    }
    drop(w);
    let mut lines = r.lines(10)?;
    for p in &ps {
        check!(join(p)? == 0, "{} failed", p.name());
    }
    lines.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("test process {i}")).collect();
    want.sort();
    check!(lines == want, "got {lines:?}");
    Ok(())
}

fn start_twice_and_join_before_start_are_errors(m: StartMethod) -> Result<(), Failed> {
    let mut p = get_context(m).process(|_: ()| {}, ());
    check!(
        matches!(p.join(), Err(Error::NotStarted)),
        "join before start"
    );
    check!(
        matches!(p.terminate(), Err(Error::NotStarted)),
        "terminate before start"
    );
    check!(
        matches!(p.sentinel(), Err(Error::NotStarted)),
        "sentinel before start"
    );
    check!(
        !p.is_alive() && p.exitcode().is_none() && p.pid().is_none(),
        "state before start"
    );
    p.start()?;
    check!(
        matches!(p.start(), Err(Error::AlreadyStarted)),
        "second start"
    );
    check!(
        matches!(p.set_daemon(true), Err(Error::AlreadyStartedSetting)),
        "daemon after start"
    );
    join(&p)?;
    Ok(())
}

fn try_start_child(w: End) {
    let mut p = Process::new(|_: ()| {}, ());
    match p.start() {
        Err(Error::DaemonCannotHaveChildren) => w.send("refused"),
        other => w.send(&format!("unexpected: {other:?}")),
    }
}

fn daemon_cannot_start_children(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let mut p = get_context(m).process(try_start_child, w);
    p.set_daemon(true)?;
    check!(p.daemon(), "daemon flag");
    p.start()?;
    let lines = r.lines(1)?;
    check!(lines == ["refused"], "daemon child said {lines:?}");
    check!(join(&p)? == 0, "daemon child failed");
    Ok(())
}

/// Starts a grandchild with the same method, reports both names, checks reaping.
fn spawn_grandchild((m, w): (StartMethod, End)) {
    let mut p = get_context(m).process(|_: ()| {}, ());
    w.send(&multiproc_core::current_process().name);
    w.send(p.name());
    p.start().unwrap();
    p.join().unwrap();
    w.send(&multiproc_core::active_children().len().to_string());
}

fn grandchild_names_and_reaping(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let p = start(m, spawn_grandchild, (m, w))?;
    let lines = r.lines(3)?;
    check!(join(&p)? == 0, "child failed");
    let id = p.name().rsplit('-').next().unwrap().to_string();
    check!(lines[0] == p.name(), "child name {:?}", lines[0]);
    check!(
        lines[1] == format!("{}-{id}:1", m_class(m)),
        "grandchild name {:?} (child {})",
        lines[1],
        p.name()
    );
    check!(lines[2] == "0", "active children after join: {}", lines[2]);
    Ok(())
}

fn m_class(m: StartMethod) -> &'static str {
    match m {
        StartMethod::Fork => "ForkProcess",
        StartMethod::Spawn => "SpawnProcess",
        StartMethod::Forkserver => "ForkServerProcess",
    }
}

/// Starts a daemon that sleeps forever, reports its pid, then returns or waits to be killed.
fn parent_of_daemon((m, w, wait_for_kill): (StartMethod, End, bool)) {
    let mut d = get_context(m).process(sleep_forever, ());
    d.set_daemon(true).unwrap();
    d.start().unwrap();
    w.send(&d.pid().unwrap().to_string());
    drop(w);
    if wait_for_kill {
        sleep_forever(());
    }
}

/// Starts a parent of a daemon; returns the parent and the daemon's pidfd, or `None` if the
/// daemon is already gone (its parent may have returned and reaped it before we looked).
fn daemon_pid_from(
    m: StartMethod,
    wait_for_kill: bool,
) -> Result<(Process, Option<OwnedFd>), Failed> {
    let (r, w) = End::pair();
    let p = start(m, parent_of_daemon, (m, w, wait_for_kill))?;
    let lines = r.lines(1)?;
    let pid: i32 = lines.first().ok_or("no daemon pid")?.parse()?;
    let pid = rustix::process::Pid::from_raw(pid).ok_or("bad pid")?;
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok((p, Some(fd))),
        Err(rustix::io::Errno::SRCH) => Ok((p, None)),
        Err(e) => Err(e.into()),
    }
}

fn wait_pidfd(pidfd: &OwnedFd, what: &str) -> Result<(), Failed> {
    let ts = rustix::event::Timespec::try_from(LONG).unwrap();
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    check!(rustix::event::poll(&mut fds, Some(&ts))? == 1, "{what}");
    Ok(())
}

fn daemon_children_gone_after_parent_exits(m: StartMethod) -> Result<(), Failed> {
    let (p, pidfd) = daemon_pid_from(m, false)?;
    check!(join(&p)? == 0, "parent of the daemon failed");
    match pidfd {
        Some(fd) => wait_pidfd(&fd, "daemon still alive after its parent returned"),
        None => Ok(()),
    }
}

fn daemon_children_die_with_killed_parent(m: StartMethod) -> Result<(), Failed> {
    let (p, pidfd) = daemon_pid_from(m, true)?;
    let pidfd = pidfd.ok_or("the daemon died while its parent was still running")?;
    p.kill()?;
    check!(join(&p)? == -9, "parent not killed");
    wait_pidfd(&pidfd, "daemon still alive after its parent was killed")
}

fn is_zombie_or_present(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // A reused pid would not be our child; only a zombie of this pid matters.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("");
            state == "Z"
        }
        Err(_) => false,
    }
}

fn no_zombie_after_join(m: StartMethod) -> Result<(), Failed> {
    let p = start(m, |_: ()| {}, ())?;
    join(&p)?;
    let pid = p.pid().unwrap();
    check!(
        !is_zombie_or_present(pid),
        "pid {pid} is a zombie after join"
    );
    Ok(())
}

fn active_children_reaps_finished(m: StartMethod) -> Result<(), Failed> {
    let sleeper = started_then_ready(m)?;
    let quick = start(m, |_: ()| {}, ())?;
    let pid = quick.pid().unwrap();
    // Wait for the quick one to end without reaping it through the Process.
    let deadline = Instant::now() + LONG;
    loop {
        let active: Vec<u32> = multiproc_core::active_children()
            .iter()
            .map(|h| h.pid())
            .collect();
        check!(
            active.contains(&sleeper.pid().unwrap()),
            "sleeper missing from {active:?}"
        );
        if !active.contains(&pid) {
            break;
        }
        check!(Instant::now() < deadline, "quick child still active");
        std::thread::yield_now();
    }
    check!(
        quick.exitcode() == Some(0),
        "quick exitcode {:?}",
        quick.exitcode()
    );
    check!(!is_zombie_or_present(pid), "quick child is a zombie");
    sleeper.kill()?;
    join(&sleeper)?;
    check!(
        !multiproc_core::active_children()
            .iter()
            .any(|h| h.pid() == sleeper.pid().unwrap()),
        "sleeper still listed"
    );
    Ok(())
}

fn sentinel_becomes_readable(m: StartMethod) -> Result<(), Failed> {
    let p = started_then_ready(m)?;
    let ready = |t: Duration| {
        let ts = rustix::event::Timespec::try_from(t).unwrap();
        let sentinel = p.sentinel().unwrap();
        let mut fds = [rustix::event::PollFd::new(
            &sentinel,
            rustix::event::PollFlags::IN,
        )];
        rustix::event::poll(&mut fds, Some(&ts)).unwrap() == 1
    };
    check!(!ready(Duration::ZERO), "sentinel ready while running");
    p.kill()?;
    check!(ready(LONG), "sentinel not ready after kill");
    check!(join(&p)? == -9, "exit code");
    Ok(())
}

fn close_rules(m: StartMethod) -> Result<(), Failed> {
    let mut p = started_then_ready(m)?;
    check!(
        matches!(p.close(), Err(Error::StillRunning)),
        "close while running"
    );
    p.kill()?;
    join(&p)?;
    p.close()?;
    p.close()?;
    check!(matches!(p.join(), Err(Error::Closed)), "join after close");
    check!(matches!(p.start(), Err(Error::Closed)), "start after close");
    check!(format!("{p:?}").contains("closed"), "repr {p:?}");
    Ok(())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn no_fd_leak_after_1000_cycles(m: StartMethod) -> Result<(), Failed> {
    // Warm up (the forkserver keeps one socket and one pidfd).
    join(&start(m, |_: ()| {}, ())?)?;
    let before = open_fds();
    for i in 0..1000u32 {
        let p = start(m, |i: u32| assert!(i < 1000), i)?;
        check!(join(&p)? == 0, "cycle {i} failed");
    }
    let after = open_fds();
    check!(
        after == before,
        "{before} fds before, {after} after 1000 cycles"
    );
    Ok(())
}

fn many_concurrent_children(m: StartMethod) -> Result<(), Failed> {
    let ps: Vec<Process> = (0..50u64)
        .map(|i| start(m, |i: u64| std::process::exit((i % 7) as i32), i))
        .collect::<Result<_, _>>()?;
    for (i, p) in ps.iter().enumerate() {
        check!(
            join(p)? == (i % 7) as i32,
            "child {i} exit code {:?}",
            p.exitcode()
        );
    }
    Ok(())
}

fn start_method_settings() -> Result<(), Failed> {
    use multiproc_core::*;
    check!(
        get_all_start_methods()[0] == StartMethod::Forkserver,
        "default first"
    );
    check!(get_all_start_methods().len() == 3, "three methods");
    check!(
        matches!("bogus".parse::<StartMethod>(), Err(Error::UnknownStartMethod(ref s)) if s == "bogus"),
        "bogus parsed"
    );
    for m in METHODS {
        check!(
            get_context(m).start_method() == m,
            "Context::start_method of {m}"
        );
        check!(
            get_context(m).process(|_: ()| {}, ()).start_method() == Some(m),
            "Process::start_method of a {m} context"
        );
    }
    check!(
        Process::new(|_: ()| {}, ()).start_method().is_none(),
        "Process::new has no fixed method"
    );
    check!(
        "spawn".parse::<StartMethod>()? == StartMethod::Spawn,
        "spawn parse"
    );
    force_start_method(None);
    check!(start_method_if_set().is_none(), "unset");
    set_start_method(StartMethod::Spawn)?;
    check!(
        matches!(
            set_start_method(StartMethod::Fork),
            Err(Error::StartMethodAlreadySet)
        ),
        "second set"
    );
    check!(get_start_method() == StartMethod::Spawn, "get");
    let mut p = Process::new(|_: ()| {}, ());
    check!(p.name().starts_with("Process-"), "name {}", p.name());
    p.start()?;
    join(&p)?;
    force_start_method(None);
    check!(
        get_start_method() == DEFAULT_START_METHOD,
        "default fixed by get"
    );
    check!(cpu_count() >= 1, "cpu_count");
    Ok(())
}

fn fork_refused_with_threads() -> Result<(), Failed> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv());
    let mut p = get_context(StartMethod::Fork).process(|_: ()| {}, ());
    let r = p.start();
    drop(tx);
    let _ = t.join();
    check!(
        matches!(r, Err(Error::ForkWithThreads { threads }) if threads >= 2),
        "got {r:?}"
    );
    // Spawn and forkserver are fine with threads around.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv());
    let r = start(StartMethod::Spawn, |_: ()| {}, ()).and_then(|p| join(&p));
    drop(tx);
    let _ = t.join();
    check!(r? == 0, "spawn with a thread");
    Ok(())
}

fn current_process_in_main() -> Result<(), Failed> {
    let me = multiproc_core::current_process();
    check!(me.name == "MainProcess", "name {}", me.name);
    check!(me.pid == std::process::id(), "pid");
    check!(!me.daemon && me.identity.is_empty(), "daemon/identity");
    check!(
        multiproc_core::parent_process().is_none(),
        "main has no parent"
    );
    // The authkey is a secret: `Debug` does not print it (§3).
    let shown = format!("{me:?}");
    check!(
        shown.contains("authkey: \"<hidden>\"") && !shown.contains(&format!("{:?}", me.authkey)),
        "Debug shows the authkey: {shown}"
    );
    Ok(())
}

/// Waits for one line, then exits with code 7.
/// The forkserver's children when no job runs (every child joined): its idle spare, the one
/// it announced to this process, read from procfs once the server has forked it (it forks the
/// next spare while the last job runs, so it may still be at it).
fn forkserver_spares() -> Result<Vec<i32>, Failed> {
    let server = multiproc_core::forkserver_pid().ok_or("no forkserver running")?;
    let until = Instant::now() + LONG;
    loop {
        let list = std::fs::read_to_string(format!("/proc/{server}/task/{server}/children"))?;
        let pids: Vec<i32> = list
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if !pids.is_empty() {
            return Ok(pids);
        }
        check!(Instant::now() < until, "the server forked no spare");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `pid` has ended (gone, or a zombie: an orphan's reaper may be slow), up to
/// `LONG`.
fn wait_gone(pid: i32) -> Result<(), Failed> {
    let until = Instant::now() + LONG;
    loop {
        // The state follows the command name's closing parenthesis.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().to_string())
            });
        match state {
            None => return Ok(()),
            Some(rest) if rest.starts_with('Z') || rest.starts_with('X') => return Ok(()),
            Some(_) => {}
        }
        check!(Instant::now() < until, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn exit_code_of(code: i32) {
    std::process::exit(code);
}

/// The server announces its spare before anyone asks: a spare killed while it waits is
/// replaced at the next start (the job goes to the next one, nothing fails), and a spare whose
/// server died leaves by itself (the client holds its job socket, so only its watch of the
/// server can end it).
fn forkserver_spares_killed_or_orphaned() -> Result<(), Failed> {
    let p = start(StartMethod::Forkserver, exit_code_of, 3)?;
    check!(join(&p)? == 3, "first child");
    let spares = forkserver_spares()?;
    check!(spares.len() == 1, "idle spares of the server: {spares:?}");
    for &pid in &spares {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        )?;
        wait_gone(pid)?;
    }
    for code in [4, 5] {
        let p = start(StartMethod::Forkserver, exit_code_of, code)?;
        check!(
            !spares.contains(&(p.pid().unwrap() as i32)),
            "the job went to the killed spare"
        );
        let got = join(&p)?;
        check!(
            got == code,
            "child after the spare was killed: exit code {got}"
        );
    }
    // Now the server dies with a spare announced: the spare goes too, and the next start
    // launches a new server.
    let spares = forkserver_spares()?;
    check!(spares.len() == 1, "idle spares of the server: {spares:?}");
    let server = multiproc_core::forkserver_pid().ok_or("no forkserver running")?;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server as i32).unwrap(),
        rustix::process::Signal::KILL,
    )?;
    wait_gone(spares[0])?;
    let p = start(StartMethod::Forkserver, exit_code_of, 6)?;
    check!(join(&p)? == 6, "child of the new server");
    check!(
        multiproc_core::forkserver_pid() != Some(server),
        "same server pid"
    );
    Ok(())
}

/// Four threads start and join 25 children each at the same time (the forkserver hands out
/// one announced spare at a time): every child runs its own job, as its exit code says.
fn starts_from_four_threads_at_once(m: StartMethod) -> Result<(), Failed> {
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            std::thread::spawn(move || -> Result<(), String> {
                for i in 0..25u64 {
                    let code = (t * 25 + i) % 100;
                    let p = start(m, |c: u64| std::process::exit(c as i32), code)
                        .map_err(|e| format!("{e:?}"))?;
                    let got = join(&p).map_err(|e| format!("{e:?}"))?;
                    if got != code as i32 {
                        return Err(format!("thread {t} child {i}: exit code {got}, not {code}"));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a starting thread panicked")??;
    }
    Ok(())
}

fn exit_7_when_told(r: End) {
    let _ = r.lines(1);
    std::process::exit(7);
}

fn forkserver_death_is_an_error_then_restarts() -> Result<(), Failed> {
    // A daemon (dies with the server) and a non-daemon (survives it, as in Python).
    let daemon = started_then_ready(StartMethod::Forkserver)?;
    let (r, w) = End::pair();
    let survivor = start(StartMethod::Forkserver, exit_7_when_told, r)?;
    let server = multiproc_core::forkserver_pid().ok_or("no forkserver running")?;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(server as i32).unwrap(),
        rustix::process::Signal::KILL,
    )?;
    // The daemon was killed with the server and nobody is left to say how: the code CPython
    // records (255), no hang, and the child leaves the table of children.
    let r = daemon.join_timeout(LONG)?;
    check!(
        r == Some(multiproc_core::LOST_STATUS),
        "join of the daemon after the server died: {r:?}"
    );
    check!(
        daemon.exitcode() == Some(255) && !daemon.is_alive(),
        "daemon's exitcode {:?}",
        daemon.exitcode()
    );
    // The non-daemon still runs (join waits for it, not for the dead server); once it ends,
    // nobody is left to report its exit code: 255 again, not a hang.
    check!(
        survivor.join_timeout(Duration::from_millis(100))?.is_none(),
        "survivor ended early"
    );
    check!(survivor.is_alive(), "survivor not alive while it runs");
    w.send("go");
    let r = survivor.join_timeout(LONG)?;
    check!(r == Some(255), "join of the survivor: {r:?}");
    check!(
        survivor.exitcode() == Some(255),
        "survivor's exitcode {:?}",
        survivor.exitcode()
    );
    let pids = [daemon.pid(), survivor.pid()];
    check!(
        !multiproc_core::active_children()
            .iter()
            .any(|c| pids.contains(&Some(c.pid()))),
        "a child of the dead server is still listed"
    );
    let q = start(StartMethod::Forkserver, |_: ()| {}, ())?;
    check!(join(&q)? == 0, "a new server did not take over");
    check!(
        multiproc_core::forkserver_pid() != Some(server),
        "same server pid"
    );
    Ok(())
}

fn too_many_fds_is_an_error(m: StartMethod) -> Result<(), Failed> {
    let ends: Vec<End> = (0..300).map(|_| End::pair().0).collect();
    let mut p = get_context(m).process(|e: Vec<End>| assert_eq!(e.len(), 300), ends);
    let r = p.start();
    if m == StartMethod::Fork {
        // Nothing is encoded under fork: the child inherits every fd.
        r?;
        check!(join(&p)? == 0, "fork child with 300 fds");
    } else {
        check!(matches!(r, Err(Error::TooManyFds(300))), "got {r:?}");
    }
    Ok(())
}

fn print_child(_: ()) {
    println!("child line");
}

/// Text the parent buffered with `print!` must come out once, not once more per forked child.
fn parent_stdout_flushed_before_start(m: StartMethod) -> Result<(), Failed> {
    std::io::stdout().flush()?;
    let saved = rustix::io::fcntl_dupfd_cloexec(rustix::stdio::stdout(), 10)?;
    let (r, w) = End::pair();
    rustix::stdio::dup2_stdout(&w.0)?;
    drop(w);
    print!("partial-marker");
    let result = start(m, print_child, ()).and_then(|p| join(&p));
    println!();
    std::io::stdout().flush()?;
    rustix::stdio::dup2_stdout(&saved)?;
    let text = r.lines(usize::MAX)?.join("\n");
    check!(result? == 0, "child failed");
    check!(
        text.matches("partial-marker").count() == 1,
        "buffered parent output came out {} times: {text:?}",
        text.matches("partial-marker").count()
    );
    // A forkserver child writes to the server's stdout (as in Python), not to this pipe.
    if m != StartMethod::Forkserver {
        check!(
            text.contains("child line"),
            "child output missing: {text:?}"
        );
    }
    Ok(())
}

/// Waits for "go", then reports.
fn finish_when_told((go, w): (End, End)) {
    let _ = go.lines(1);
    w.send("non-daemon finished");
}

/// Starts a daemon and a non-daemon that waits to be told, reports the daemon's pid, says
/// "exiting" and calls `std::process::exit(0)`: the atexit handler must join the non-daemon
/// and stop the daemon.
fn exit_with_children((m, go, w): (StartMethod, End, End)) {
    let mut d = get_context(m).process(sleep_forever, ());
    d.set_daemon(true).unwrap();
    d.start().unwrap();
    let mut n = get_context(m).process(finish_when_told, (go, End(w.0.try_clone().unwrap())));
    n.start().unwrap();
    w.send(&d.pid().unwrap().to_string());
    w.send("exiting");
    drop(w);
    std::process::exit(0);
}

fn exit_joins_children_and_terminates_daemons(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let (go_r, go_w) = End::pair();
    let p = start(m, exit_with_children, (m, go_r, w))?;
    let pid: i32 = r.line()?.parse()?;
    check!(r.line()? == "exiting", "no exiting line");
    // The middle process is in its exit handler now, which must wait for the non-daemon child,
    // itself waiting for our "go": the middle process cannot have ended.
    check!(
        p.join_timeout(Duration::from_millis(200))?.is_none(),
        "the parent exited before its non-daemon child ({:?})",
        p.exitcode()
    );
    go_w.send("go");
    check!(join(&p)? == 0, "parent exit code {:?}", p.exitcode());
    check!(
        r.line()? == "non-daemon finished",
        "non-daemon line missing"
    );
    let pid = rustix::process::Pid::from_raw(pid).ok_or("bad pid")?;
    if let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        wait_pidfd(&fd, "daemon alive after its parent exited")?;
    }
    Ok(())
}

fn report_method_and_cwd(w: End) {
    w.send(&format!("{:?}", multiproc_core::start_method_if_set()));
    w.send(&std::env::current_dir().unwrap().display().to_string());
}

/// In the child: where fd 0 points, whether it is inherited across exec, and what a read of
/// stdin returns.
fn report_stdin(w: End) {
    use std::io::Read;
    let target = std::fs::read_link("/proc/self/fd/0").map(|p| p.display().to_string());
    let cloexec = rustix::io::fcntl_getfd(rustix::stdio::stdin())
        .map(|f| f.contains(rustix::io::FdFlags::CLOEXEC));
    let mut buf = [0u8; 16];
    let read = std::io::stdin().read(&mut buf).map_err(|e| e.to_string());
    w.send(&format!("{target:?} {cloexec:?} {read:?}"));
}

/// Python gives every child a /dev/null stdin (a read is at end-of-file at once), which an
/// exec'd grandchild inherits: fd 0 is not close-on-exec.
fn child_stdin_is_dev_null(m: StartMethod) -> Result<(), Failed> {
    // The parent's stdin is a pipe for the start (whatever the test runner gave it), so a
    // child that kept the parent's stdin would show it.
    let saved = rustix::io::dup(rustix::stdio::stdin())?;
    // The write end is closed at once: a child reading this pipe sees end-of-file too (only
    // where fd 0 points tells the two apart), so a failure is reported, not a hang.
    let (pipe_r, _) = rustix::pipe::pipe()?;
    rustix::stdio::dup2_stdin(&pipe_r)?;
    let (r, w) = End::pair();
    let started = start(m, report_stdin, w);
    rustix::stdio::dup2_stdin(&saved)?;
    let p = started?;
    let line = r.line()?;
    check!(join(&p)? == 0, "child failed");
    check!(
        line == r#"Ok("/dev/null") Ok(false) Ok(0)"#,
        "child's stdin: {line}"
    );
    Ok(())
}

fn child_inherits_start_method_and_cwd(m: StartMethod) -> Result<(), Failed> {
    let previous_method = multiproc_core::start_method_if_set();
    let previous_dir = std::env::current_dir()?;
    let dir = std::env::temp_dir().canonicalize()?;
    multiproc_core::force_start_method(Some(StartMethod::Spawn));
    std::env::set_current_dir(&dir)?;
    let (r, w) = End::pair();
    let result = start(m, report_method_and_cwd, w);
    std::env::set_current_dir(previous_dir)?;
    multiproc_core::force_start_method(previous_method);
    let p = result?;
    let lines = r.lines(2)?;
    check!(join(&p)? == 0, "child failed");
    // As CPython's `_bootstrap`: a process made by a context reports the context's method.
    check!(
        lines[0] == format!("Some({m:?})"),
        "child's start method {} (context {m})",
        lines[0]
    );
    check!(
        lines[1] == dir.display().to_string(),
        "child's cwd {} vs {}",
        lines[1],
        dir.display()
    );
    // A plain `Process::new` child inherits the parent's `set_start_method` choice.
    multiproc_core::force_start_method(Some(m));
    let (r, w) = End::pair();
    let mut q = Process::new(report_method_and_cwd, w);
    let started = q.start();
    multiproc_core::force_start_method(previous_method);
    started?;
    let lines = r.lines(2)?;
    check!(join(&q)? == 0, "child failed");
    check!(
        lines[0] == format!("Some({m:?})"),
        "Process::new child's start method {} (global {m})",
        lines[0]
    );
    Ok(())
}

/// Reports what every open fd of the child refers to.
fn list_fds(w: End) {
    let mut targets = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let target = std::fs::read_link(entry.path()).map(|p| p.display().to_string());
        targets.push(format!(
            "{}={}",
            entry.file_name().to_string_lossy(),
            target.unwrap_or_default()
        ));
    }
    w.send(&targets.join(" "));
}

fn child_inherits_only_its_fds(m: StartMethod) -> Result<(), Failed> {
    // The parent holds plenty of fds here (pipes, pidfds, the forkserver's socket); a spawned or
    // forkserver child must see only stdio, its argument's fd, its parent's pidfd, and the
    // directory it lists. A fork child inherits everything, as in Python.
    let (r, w) = End::pair();
    let (_other_r, _other_w) = End::pair();
    let p = start(m, list_fds, w)?;
    let line = r.lines(1)?.remove(0);
    check!(join(&p)? == 0, "child failed");
    let pipes = line.matches("pipe:").count();
    if m == StartMethod::Fork {
        // As in Python, a fork child has every fd of its parent: both ends of both pipes.
        check!(
            pipes >= 4,
            "fork child's fds lack the parent's pipes: {line}"
        );
        return Ok(());
    }
    // Above stdio (which may be anything the test runner chose).
    let fds: Vec<&str> = line
        .split(' ')
        .filter(|e| {
            e.split('=')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > 2)
        })
        .collect();
    let count = |what: &str| fds.iter().filter(|e| e.contains(what)).count();
    check!(
        count("pipe:") == 1 && count("socket:") == 0 && count("pidfd") <= 1 && fds.len() <= 3,
        "child's fds: {line}"
    );
    Ok(())
}

type Counters = multiproc_core::heap::Shared<[std::sync::atomic::AtomicU64; 2]>;

/// Adds 1000 to the first counter, atomically, and records the child's pid in the second.
fn bump(c: Counters) {
    for _ in 0..1000 {
        c[0].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    c[1].store(
        u64::from(std::process::id()),
        std::sync::atomic::Ordering::SeqCst,
    );
}

fn shared_heap_is_shared(m: StartMethod) -> Result<(), Failed> {
    use std::sync::atomic::Ordering::SeqCst;
    let c: Counters = multiproc_core::heap::Shared::new()?;
    // Another object in the same arena must not be disturbed.
    let neighbour: multiproc_core::heap::Shared<std::sync::atomic::AtomicU64> =
        multiproc_core::heap::Shared::new()?;
    let ps: Vec<Process> = (0..4)
        .map(|_| start(m, bump, c.clone()))
        .collect::<Result<_, _>>()?;
    for p in &ps {
        check!(join(p)? == 0, "child failed");
    }
    check!(c[0].load(SeqCst) == 4000, "counter {}", c[0].load(SeqCst));
    let last = c[1].load(SeqCst) as u32;
    check!(
        ps.iter().any(|p| p.pid() == Some(last)),
        "pid {last} written by none of the children"
    );
    check!(neighbour.load(SeqCst) == 0, "neighbour disturbed");
    Ok(())
}

/// Allocates a few heap objects and writes into them.
fn allocate_and_write(_: ()) {
    for _ in 0..8 {
        let x: multiproc_core::heap::Shared<std::sync::atomic::AtomicU64> =
            multiproc_core::heap::Shared::new().unwrap();
        x.store(99, std::sync::atomic::Ordering::SeqCst);
        std::mem::forget(x);
    }
}

fn child_allocations_do_not_alias_the_parents(m: StartMethod) -> Result<(), Failed> {
    // The parent's arena exists before the fork; a fork child that allocates must not carve
    // the parent's next offsets out of its inherited copy of the arena.
    let first: multiproc_core::heap::Shared<std::sync::atomic::AtomicU64> =
        multiproc_core::heap::Shared::new()?;
    let p = start(m, allocate_and_write, ())?;
    check!(join(&p)? == 0, "child failed");
    for _ in 0..8 {
        let y: multiproc_core::heap::Shared<std::sync::atomic::AtomicU64> =
            multiproc_core::heap::Shared::new()?;
        check!(
            y.load(std::sync::atomic::Ordering::SeqCst) == 0,
            "a new object holds a child's write"
        );
    }
    drop(first);
    Ok(())
}

/// Waits for end-of-file on its pipe, then reports through another.
fn helper_main((r, w): (End, End)) {
    let _ = r.lines(usize::MAX);
    w.send("helper done");
}

fn helpers_are_not_children() -> Result<(), Failed> {
    let (r, w) = End::pair();
    let (done_r, done_w) = End::pair();
    let before = Process::new(|_: ()| {}, ());
    let pid = multiproc_core::spawn_helper(helper_main, (r, done_w))?;
    let after = Process::new(|_: ()| {}, ());
    let n = |p: &Process| {
        p.name()
            .rsplit('-')
            .next()
            .and_then(|x| x.parse::<u32>().ok())
    };
    check!(
        n(&after) == n(&before).map(|x| x + 1),
        "a helper took a process number: {} then {}",
        before.name(),
        after.name()
    );
    check!(
        !multiproc_core::active_children()
            .iter()
            .any(|h| h.pid() == pid),
        "helper listed as a child"
    );
    drop(w); // the helper sees end-of-file and finishes by itself
    check!(done_r.lines(1)? == ["helper done"], "helper did not finish");
    Ok(())
}

// ---- FnRef ----

fn halve(n: u32) -> Result<u32, String> {
    if n % 2 == 0 {
        Ok(n / 2)
    } else {
        Err(format!("{n} is odd"))
    }
}

fn explode(what: String) -> u8 {
    panic!("exploded: {what}")
}

fn triple(n: u64) -> u64 {
    n * 3
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

type Refs = (FnRef<u32, Result<u32, String>>, FnRef<String, u8>, End);

/// Calls the references it received and sends back one of its own.
fn call_refs((halve, explode, w): Refs) {
    w.send(&format!("{:?}", halve.call(10)));
    w.send(&format!("{:?}", halve.call(7)));
    match explode.call("in the child".into()) {
        Err(CallError::Panicked(p)) => w.send(&format!(
            "panicked {} at {}",
            p.message(),
            p.location().unwrap_or("?")
        )),
        other => w.send(&format!("no panic: {other:?}")),
    }
    let mine = FnRef::new(triple).unwrap();
    w.send(&hex(&postcard::to_allocvec(&mine).unwrap()));
}

fn fnref_round_trip_in_child(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let refs: Refs = (FnRef::new(halve)?, FnRef::new(explode)?, w);
    let p = start(m, call_refs, refs)?;
    let lines = r.lines(4)?;
    check!(join(&p)? == 0, "child exit {:?}", p.exitcode());
    check!(lines.len() == 4, "lines {lines:?}");
    check!(lines[0] == "Ok(Ok(5))", "result {}", lines[0]);
    check!(
        lines[1] == "Ok(Err(\"7 is odd\"))",
        "Err value {}",
        lines[1]
    );
    check!(
        lines[2].starts_with("panicked exploded: in the child at ")
            && lines[2].contains("processes.rs"),
        "panic {}",
        lines[2]
    );
    // A reference made in the child works in the parent (same executable, same tree).
    let back: FnRef<u64, u64> = reduction::decode(&unhex(&lines[3]), Vec::new())?;
    check!(back.call(14)? == 42, "call of the child's reference");
    Ok(())
}

fn decode_fnref_and_exit(hex_bytes: &str) -> ! {
    match reduction::decode::<FnRef<u64, u64>>(&unhex(hex_bytes), Vec::new()) {
        Ok(f) => println!("accepted {:?}", f.call(1)),
        Err(reduction::ReductionError::FnRef(e)) => println!("refused {e:?}"),
        Err(e) => println!("other error {e}"),
    }
    std::process::exit(0)
}

/// Runs `exe` as an unrelated process asked to decode `bytes`; returns what it printed.
fn decode_elsewhere(exe: &std::path::Path, bytes: &[u8]) -> Result<String, Failed> {
    let out = std::process::Command::new(exe)
        .env("MULTIPROC_TEST_DECODE_FNREF", hex(bytes))
        .output()?;
    check!(out.status.success(), "decoder failed: {out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn fnref_from_another_executable_or_tree_is_refused() -> Result<(), Failed> {
    let bytes = postcard::to_allocvec(&FnRef::new(triple)?)?;
    // A copy of this very binary: the same code at the same offsets, another executable.
    let dir = std::env::temp_dir().join(format!("multiproc-fnref-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let copy = dir.join("copy");
    std::fs::copy("/proc/self/exe", &copy)?;
    let other = decode_elsewhere(&copy, &bytes);
    let _ = std::fs::remove_dir_all(&dir);
    let other = other?;
    check!(other == "refused OtherExecutable", "copy said {other}");
    // The same executable run by someone else: not this process tree's tag.
    let foreign = decode_elsewhere(std::path::Path::new("/proc/self/exe"), &bytes)?;
    check!(foreign == "refused Foreign", "unrelated run said {foreign}");
    Ok(())
}

// ---- after fork ----

static HOOK_SAW: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn after_fork_hook() {
    HOOK_SAW.store(
        multiproc_core::current_pid(),
        std::sync::atomic::Ordering::Relaxed,
    );
}

fn report_hook(w: End) {
    let saw = HOOK_SAW.load(std::sync::atomic::Ordering::Relaxed);
    w.send(&(saw == multiproc_core::current_pid()).to_string());
}

fn after_fork_hooks_run_in_fork_children(m: StartMethod) -> Result<(), Failed> {
    multiproc_core::register_after_fork(after_fork_hook);
    multiproc_core::register_after_fork(after_fork_hook); // once only
    let (r, w) = End::pair();
    let p = start(m, report_hook, w)?;
    let lines = r.lines(1)?;
    check!(join(&p)? == 0, "child exit");
    // A fork child inherits the registry and runs it; spawn and forkserver children start from a
    // fresh image in which nothing was registered.
    let expected = m == StartMethod::Fork;
    check!(
        lines == [expected.to_string()],
        "hook ran in the child: {lines:?} under {m}"
    );
    check!(
        HOOK_SAW.load(std::sync::atomic::Ordering::Relaxed) == 0,
        "the hook ran in the parent"
    );
    Ok(())
}

fn use_core_state(w: End) {
    let me = multiproc_core::current_process();
    let _ = multiproc_core::active_children();
    multiproc_core::register_after_fork(after_fork_hook);
    let _ = multiproc_core::get_start_method();
    w.send(&me.name);
}

/// With the fork opt-in, another thread hammers core's locked state while the main thread
/// forks: a child that inherited one of those locks held would block forever.
fn fork_children_never_block_on_core_locks() -> Result<(), Failed> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    STOP.store(false, Ordering::Relaxed);
    // SAFETY: the other thread only uses multiproc-core's own state (under the fork lock) and
    // allocates; it never prints or holds a user lock.
    unsafe { multiproc_core::allow_fork_with_threads(true) };
    let hammer = std::thread::spawn(|| {
        while !STOP.load(Ordering::Relaxed) {
            let _ = multiproc_core::current_process();
            let _ = multiproc_core::active_children();
            multiproc_core::register_after_fork(after_fork_hook);
            let _ = multiproc_core::get_start_method();
        }
    });
    let result = (|| -> Result<(), Failed> {
        for _ in 0..100 {
            let (r, w) = End::pair();
            let p = start(StartMethod::Fork, use_core_state, w)?;
            let lines = r.lines(1)?;
            check!(join(&p)? == 0, "child exit {:?}", p.exitcode());
            check!(lines.len() == 1, "child said {lines:?}");
        }
        Ok(())
    })();
    STOP.store(true, Ordering::Relaxed);
    let _ = hammer.join();
    // SAFETY: back to the default (refusing fork with threads) once the thread has ended.
    unsafe { multiproc_core::allow_fork_with_threads(false) };
    result
}

// ---- daemons and threads ----

/// Says "ready" (its death signal is armed by then), waits for "go" on `r`, then answers
/// "alive" on `w`.
fn answer_when_asked((ready, r, w): (End, End, End)) {
    ready.send("ready");
    drop(ready);
    let _ = r.lines(1);
    w.send("alive");
}

fn daemon_outlives_the_thread_that_started_it(m: StartMethod) -> Result<(), Failed> {
    let (to_child_r, to_child_w) = End::pair();
    let (from_child_r, from_child_w) = End::pair();
    if m == StartMethod::Fork {
        // SAFETY: the starting thread does nothing but start the child; no lock is held.
        unsafe { multiproc_core::allow_fork_with_threads(true) };
    }
    let thread = std::thread::spawn(move || {
        let (ready_r, ready_w) = End::pair();
        let mut p = get_context(m).process(answer_when_asked, (ready_w, to_child_r, from_child_w));
        p.set_daemon(true).unwrap();
        let started = p.start().map_err(|e| e.to_string());
        // The thread ends only once the child is running its target (death signal armed).
        if started.is_ok() {
            let _ = ready_r.lines(1);
        }
        (started.map(|()| p), rustix::thread::gettid())
    });
    let joined = thread.join();
    if m == StartMethod::Fork {
        // SAFETY: back to the default now that the other thread has ended.
        unsafe { multiproc_core::allow_fork_with_threads(false) };
    }
    let (p, tid) = joined.map_err(|_| "the starting thread panicked")?;
    let p = p?;
    // The thread is gone for the kernel too (the parent-death signal would have been sent).
    let task = format!("/proc/self/task/{}", tid.as_raw_nonzero());
    let deadline = Instant::now() + LONG;
    while std::path::Path::new(&task).exists() {
        check!(Instant::now() < deadline, "thread {task} did not end");
        std::thread::yield_now();
    }
    to_child_w.send("go");
    let lines = from_child_r.lines(1)?;
    check!(
        lines == ["alive"],
        "daemon after its starting thread ended: {lines:?}, exit {:?}",
        p.exitcode()
    );
    check!(join(&p)? == 0, "daemon exit {:?}", p.exitcode());
    Ok(())
}

// ---- handles, grandchildren, stubborn daemons ----

fn process_handle_methods(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let mut p = get_context(m).process(answer_when_asked_plain, (r, End::pair().1));
    p.set_daemon(true)?;
    p.start()?;
    let h = p.handle().ok_or("no handle after start")?;
    check!(Some(h.pid()) == p.pid(), "pid {} vs {:?}", h.pid(), p.pid());
    check!(h.name() == p.name(), "name {}", h.name());
    check!(h.daemon(), "daemon flag");
    check!(
        h.is_alive() && h.exitcode().is_none(),
        "alive while blocked"
    );
    check!(
        h.join_timeout(Duration::from_millis(50))?.is_none(),
        "join_timeout while running"
    );
    check!(
        multiproc_core::active_children()
            .iter()
            .any(|c| c.pid() == h.pid()),
        "handle's child not listed"
    );
    h.terminate()?;
    check!(h.join()? == -15, "terminated code {:?}", h.exitcode());
    check!(
        !h.is_alive() && h.exitcode() == Some(-15) && p.exitcode() == Some(-15),
        "after terminate: {:?} / {:?}",
        h.exitcode(),
        p.exitcode()
    );
    // Signals after the end are no-ops, as Python's.
    h.kill()?;
    h.terminate()?;
    drop(w);
    // kill through a handle on another child
    let q = started_then_ready(m)?;
    let hq = q.handle().ok_or("no handle")?;
    hq.kill()?;
    check!(hq.join()? == -9, "killed code {:?}", hq.exitcode());
    Ok(())
}

/// Waits for a line (or EOF) on `r`; `w` is unused (kept open).
fn answer_when_asked_plain((r, _w): (End, End)) {
    let _ = r.lines(1);
}

/// Starts a grandchild that reports when its parent (this process) has died, says "ready"
/// with the grandchild's pid, then sleeps until killed.
fn parent_of_watcher((m, w): (StartMethod, End)) {
    let mut g = get_context(m).process(watch_parent, End(w.0.try_clone().unwrap()));
    g.start().unwrap();
    w.send(&format!("ready {}", g.pid().unwrap()));
    sleep_forever(());
}

fn watch_parent(w: End) {
    let parent = multiproc_core::parent_process().unwrap();
    w.send(&format!("watching, alive {}", parent.is_alive()));
    let gone = parent.join_timeout(LONG);
    w.send(&format!(
        "parent {} gone {gone}, alive now {}",
        parent.pid(),
        parent.is_alive()
    ));
}

fn grandchild_sees_its_parent_die(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let p = start(m, parent_of_watcher, (m, w))?;
    let mut first = vec![r.line()?, r.line()?];
    first.sort();
    check!(
        first[0].starts_with("ready ") && first[1] == "watching, alive true",
        "first lines {first:?}"
    );
    p.kill()?;
    check!(join(&p)? == -9, "parent's code {:?}", p.exitcode());
    let second = r.line()?;
    let want = format!("parent {} gone true, alive now false", p.pid().unwrap());
    check!(second.trim() == want, "grandchild said {second:?}");
    Ok(())
}

/// The child's `parent_process()`, kept for its fork child.
static CARRIED: std::sync::Mutex<Option<multiproc_core::ParentProcess>> =
    std::sync::Mutex::new(None);

/// Keeps its own `parent_process()`, forks a grandchild that reports on both that value and
/// its own parent, then waits for a line before it ends.
fn parent_of_carrier((w, r): (End, End)) {
    *CARRIED.lock().unwrap() = multiproc_core::parent_process();
    // Opens this child's pidfd of its parent, which its fork child must not inherit.
    assert!(CARRIED.lock().unwrap().as_ref().unwrap().is_alive());
    let mut g = get_context(StartMethod::Fork).process(report_carried, w);
    g.start().unwrap();
    g.join().unwrap();
    let _ = r.lines(1);
}

fn report_carried(w: End) {
    let carried = CARRIED.lock().unwrap().clone().unwrap();
    let own = multiproc_core::parent_process().unwrap();
    w.send(&format!(
        "carried {} {} {}",
        carried.name(),
        carried.pid(),
        carried.is_alive()
    ));
    w.send(&format!(
        "own {} {} {} {}",
        own.name(),
        own.pid(),
        own.is_alive(),
        std::os::unix::process::parent_id()
    ));
    w.send(&format!("pidfds of {:?}", pidfd_pids()));
}

/// The pids that this process's pidfds refer to (from `/proc/self/fdinfo`), sorted.
fn pidfd_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_string_lossy() != "anon_inode:[pidfd]" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(pid) = info
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|v| v.trim().parse().ok())
        {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// A `ParentProcess` taken before a fork still names the process it named (the grandparent),
/// alive, while the fork child's own `parent_process()` names its parent: one pidfd per
/// process, not shared between the two, and the fork child does not keep the pidfd its parent
/// held of the grandparent.
fn parent_process_carried_over_a_fork(m: StartMethod) -> Result<(), Failed> {
    let (r, w) = End::pair();
    let (done_r, done_w) = End::pair();
    let p = start(m, parent_of_carrier, (w, done_r))?;
    let lines = r.lines(3)?;
    done_w.send("done");
    check!(join(&p)? == 0, "child failed");
    let child = p.pid().unwrap();
    // Its own parent's pidfd (opened by `own.is_alive()`), nothing of this process.
    check!(
        lines[2] == format!("pidfds of [{child}]"),
        "grandchild said {:?} (this process is {})",
        lines[2],
        std::process::id()
    );
    check!(
        lines[0] == format!("carried MainProcess {} true", std::process::id()),
        "grandchild said {:?}",
        lines[0]
    );
    check!(
        lines[1] == format!("own {} {child} true {child}", p.name()),
        "grandchild said {:?}",
        lines[1]
    );
    Ok(())
}

/// Starts a daemon that ignores SIGTERM, reports its pid, then exits normally.
fn exit_with_stubborn_daemon((m, w): (StartMethod, End)) {
    let (ready_r, ready_w) = End::pair();
    let mut d = get_context(m).process(ignore_sigterm_forever, ready_w);
    d.set_daemon(true).unwrap();
    d.start().unwrap();
    // Exit only once the daemon ignores SIGTERM.
    let said = ready_r.lines(1).unwrap_or_default();
    w.send(&said.join(" "));
    w.send(&format!("daemon {}", d.pid().unwrap()));
}

fn ignore_sigterm_forever(ready: End) {
    // SAFETY: installing SIG_IGN has no preconditions; no handler code runs.
    unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    ready.send("ignoring");
    drop(ready);
    sleep_forever(());
}

fn daemon_ignoring_sigterm_is_killed_at_exit() -> Result<(), Failed> {
    let m = StartMethod::Spawn;
    let (r, w) = End::pair();
    let t0 = Instant::now();
    let p = start(m, exit_with_stubborn_daemon, (m, w))?;
    let code = join(&p)?;
    let took = t0.elapsed();
    let lines = r.lines(2)?;
    check!(code == 0, "middle process exit {code}");
    // SIGTERM was ignored, so the exit handler waited its 5 s before SIGKILL.
    check!(took >= Duration::from_secs(5), "exit took only {took:?}");
    let pid_line = lines
        .iter()
        .find(|l| l.starts_with("daemon "))
        .ok_or(format!("no daemon line in {lines:?}"))?;
    check!(lines.iter().any(|l| l == "ignoring"), "lines {lines:?}");
    let pid: i32 = pid_line["daemon ".len()..].parse()?;
    let pid = rustix::process::Pid::from_raw(pid).ok_or("bad pid")?;
    if let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        wait_pidfd(&fd, "stubborn daemon alive after its parent exited")?;
    }
    Ok(())
}

/// With SIGCHLD ignored the kernel reaps children itself: their status is lost, but start,
/// join and the table of children must still work, never hang, and never signal a stranger.
fn children_of_a_program_that_ignores_sigchld() -> Result<(), Failed> {
    // SAFETY: changing a signal disposition has no preconditions; restored below.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let result = (|| -> Result<(), Failed> {
        for m in [StartMethod::Fork, StartMethod::Spawn] {
            for _ in 0..20 {
                let p = start(m, |_: ()| {}, ())?;
                let code = join(&p)?;
                check!(
                    code == 0 || code == multiproc_core::LOST_STATUS,
                    "{m}: exit code {code}"
                );
                check!(!p.is_alive(), "{m}: alive after join");
                p.kill()?; // a no-op on an ended child, whoever has its pid now
            }
        }
        Ok(())
    })();
    // SAFETY: as above.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    result
}

// ---- a child that cannot be tracked ----

/// With no fd left, starts a fork child: its pidfd cannot be opened, so `start()` must kill
/// and reap it and return the error. Reports the error and what `waitpid(-1)` finds after.
/// Lowers this process's fd limit to its highest open fd and fills the holes below it: from
/// then on every new fd is EMFILE. Returns the fillers and the limit before.
fn use_up_fds() -> (Vec<OwnedFd>, rustix::process::Rlimit) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let max_fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap_or(2);
    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(max_fd + 1),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut fillers = Vec::new();
    while let Ok(fd) = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        0.into(),
    ) {
        fillers.push(fd);
    }
    (fillers, old)
}

fn start_without_fds(w: End) {
    let (fillers, _) = use_up_fds();
    let mut p = get_context(StartMethod::Fork).process(sleep_forever, ());
    let started = p.start();
    let after = rustix::process::waitpid(None, rustix::process::WaitOptions::NOHANG);
    drop(fillers);
    w.send(&format!(
        "{} / {}",
        match started {
            Err(Error::Os { op, source }) =>
                format!("{op}: {}", source.raw_os_error().unwrap_or(0)),
            other => format!("unexpected {other:?}"),
        },
        match after {
            Err(rustix::io::Errno::CHILD) => "no child left".to_string(),
            other => format!("waitpid found {other:?}"),
        }
    ));
}

/// With no fd left, starts a forkserver child (the announced spare's fds cannot be received),
/// then, with fds again, another. Reports both outcomes.
fn forkserver_start_without_fds(w: End) {
    // The server runs and has announced its spare.
    let first = get_context(StartMethod::Forkserver)
        .process(|_: ()| {}, ())
        .start_join_code();
    let (fillers, old) = use_up_fds();
    let mut p = get_context(StartMethod::Forkserver).process(|_: ()| {}, ());
    let without = match p.start() {
        Err(Error::Forkserver(msg)) if msg.contains("without its fds") => "refused".to_string(),
        other => format!("unexpected {other:?}"),
    };
    drop(fillers);
    rustix::process::setrlimit(rustix::process::Resource::Nofile, old).unwrap();
    let again = get_context(StartMethod::Forkserver)
        .process(|_: ()| std::process::exit(5), ())
        .start_join_code();
    w.send(&format!("{first:?} / {without} / {again:?}"));
}

trait StartJoinCode {
    fn start_join_code(self) -> Result<i32, String>;
}

impl StartJoinCode for Process {
    fn start_join_code(mut self) -> Result<i32, String> {
        self.start().map_err(|e| e.to_string())?;
        self.join().map_err(|e| e.to_string())
    }
}

fn forkserver_without_fds_is_an_error_then_works() -> Result<(), Failed> {
    // In a spawned process of its own, so the fd limit does not touch this one.
    let (r, w) = End::pair();
    let p = start(StartMethod::Spawn, forkserver_start_without_fds, w)?;
    let lines = r.lines(1)?;
    check!(join(&p)? == 0, "middle process exit {:?}", p.exitcode());
    check!(lines == ["Ok(0) / refused / Ok(5)"], "got {lines:?}");
    Ok(())
}

fn untrackable_child_is_killed_and_reaped() -> Result<(), Failed> {
    // In a spawned process of its own, so the fd limit does not touch this one.
    let (r, w) = End::pair();
    let p = start(StartMethod::Spawn, start_without_fds, w)?;
    let lines = r.lines(1)?;
    check!(join(&p)? == 0, "middle process exit {:?}", p.exitcode());
    check!(
        lines == [format!("pidfd_open: {} / no child left", libc::EMFILE)],
        "got {lines:?}"
    );
    Ok(())
}

/// Waits until the thread `tid` is gone for the kernel too (it no longer counts in
/// `/proc/self/task`).
fn wait_thread_gone(tid: rustix::thread::Pid) -> Result<(), Failed> {
    let task = format!("/proc/self/task/{}", tid.as_raw_nonzero());
    let deadline = Instant::now() + LONG;
    while std::path::Path::new(&task).exists() {
        check!(Instant::now() < deadline, "thread {task} did not end");
        std::thread::yield_now();
    }
    Ok(())
}

/// The library's own (fork-safe) threads do not make the fork method unusable; a user thread
/// still does.
fn fork_allowed_beside_library_threads() -> Result<(), Failed> {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let library =
        multiproc_core::spawn_fork_safe_thread("test-library-thread".into(), move || {
            let _ = rx.recv();
            rustix::thread::gettid()
        })?;
    let beside_library = start(StartMethod::Fork, |_: ()| {}, ()).and_then(|p| join(&p));
    let (utx, urx) = std::sync::mpsc::channel::<()>();
    let user = std::thread::spawn(move || {
        let _ = urx.recv();
        rustix::thread::gettid()
    });
    let mut q = get_context(StartMethod::Fork).process(|_: ()| {}, ());
    let beside_user = q.start();
    drop(utx);
    drop(tx);
    let user_tid = user.join().map_err(|_| "user thread panicked")?;
    let library_tid = library.join().map_err(|_| "library thread panicked")?;
    wait_thread_gone(user_tid)?;
    wait_thread_gone(library_tid)?;
    check!(
        beside_library? == 0,
        "fork beside a library thread did not run"
    );
    // The main thread and the user thread count (the library thread and the launcher do not).
    check!(
        matches!(beside_user, Err(Error::ForkWithThreads { threads: 2 })),
        "fork beside a user thread: {beside_user:?}"
    );
    Ok(())
}
