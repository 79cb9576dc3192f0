#!/usr/bin/env python3
"""Python twin of multiproc-benches: CPython's multiprocessing on the same figures.

Run by `cargo xtask bench` next to the Rust suite (benches/src/main.rs). The figure names,
the output contract and the measurement code are those of the reference harness
(shared/bench/python/mp_bench.py), restricted to the figures multiproc-benches prints:

  proc.start_join.{fork,forkserver,spawn}             start+join of a no-op child, us per process
  proc.start_join.{fork,forkserver,spawn}.rss256MiB   the same from a parent holding 256 MiB
  pipe.roundtrip.64B, pipe_simplex.roundtrip.64B      send_bytes 64 B, child echoes, us per round trip
  listener.roundtrip.{unix,tcp}.64B                   the same over Listener/Client with an authkey
  pipe.throughput.{1KiB,64KiB,16MiB}                  child sends, parent recv_bytes, MB/s (10^6)
  pipe_simplex.throughput.{1KiB,64KiB,16MiB}          the same over Pipe(duplex=False)
  lock.uncontended.mp_{Lock,RLock}.acquire_release    acquire(); release(), ns
  value.get_lock_increment.uncontended                with v.get_lock(): v.value += 1 on a Value('i'), ns
  lock.contended2p.value_get_lock_increment           parent and child, 1e5 increments each, ops/s
  array.fill_from_child.1e6d.{slice_from_list,elementwise_raw,memoryview_bulk}   ms
  shm.create_1MiB, shm.attach_1MiB, shm.close_both_unlink                        us
  shm.{child_write_256MiB_fresh,parent_read_256MiB_after_child,write_then_read_256MiB_end_to_end}  GB/s
  event.pingpong, barrier2.wait, condition.pingpong   round trip with a child, us
  {queue,simplequeue}.throughput.{1p1c,4p1c}          1 or 4 children put 1e5 ints in all, items/s
  {queue,simplequeue}.roundtrip.int                   put, child gets and puts back, us
  queue.item_1MiB                                     a child puts 1 MiB bytes objects, GB/s (10^9)
  pool.create_close_join.2workers                     Pool(2), close, join; ms
  pool.map.trivial.{default_chunksize,chunksize1}     map(ident, range(n), cs); tasks/s
  pool.apply_async.roundtrip                          apply_async(noop).get(); us
  pool.imap_unordered.trivial.{chunksize1,chunksize100}   every result of imap_unordered; tasks/s
  pool.map.cpu200x_sum_range_2e5.{serial,pool2,speedup}   200 x sum(range(2e5)) serially / map; ms, x
  executor.submit_result.roundtrip                    ProcessPoolExecutor(2): submit(noop).result(); us
  executor.map.trivial.{chunksize1,chunksize1000}     every result of ex.map(ident, range(n), chunksize=cs); tasks/s
  manager.dict.{set,get}_from_child, manager.queue.{put,get}_from_child
                                                      mp_bench.py's b_manager: a child does 2000 d[k] = i / d[k]
                                                      (q.put(i) / q.get()) per rep on a fork Manager's proxy,
                                                      timing itself; us per op
  manager.list.append_from_child                      the same shape with l.append(i); us per op
  manager.dict.set_8clients                           8 children (gated) each set their own key 2000 times in one
                                                      dict proxy; ops/s from the gate's opening to the last one done
  manager.start_shutdown                              get_context('fork').Manager(), shutdown(); ms each

Output contract:
  stdout: one line per figure      name<TAB>median<TAB>unit
  stderr: one line per figure      #spread<TAB>name<TAB>min<TAB>median<TAB>max<TAB>n<TAB>unit
          plus '#meta' lines
Every figure is the median over --reps repetitions of an inner loop.

One difference from mp_bench.py: the three start methods alternate inside one run (the order
is rotated each repetition), as multiproc-benches does, instead of running one after the
other; the per-method loop (20/20/5 processes per repetition) is the same.
Pipe children use the 'fork' context, as in mp_bench.py.

Usage:  python3 benches/python/mp_twin.py [--reps N] [--only GROUP[,GROUP..]] [--quick] [--list]

Top-level imports are kept minimal on purpose: 'spawn' and 'forkserver' children re-import
this module, and that cost is part of their start time.
"""
import multiprocessing as mp
import os
import sys
import time

pc = time.perf_counter
REPS = 5
QUICK = False
FORK = None  # set in main()
BALLAST = 256 << 20

# ---------------------------------------------------------------- output ----


def _fmt(v):
    a = abs(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 1:
        return "%.2f" % v
    return "%.4g" % v


def emit(name, values, unit):
    s = sorted(values)
    n = len(s)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    print("%s\t%s\t%s" % (name, _fmt(med), unit), flush=True)
    print("#spread\t%s\t%s\t%s\t%s\t%d\t%s" % (name, _fmt(s[0]), _fmt(med), _fmt(s[-1]), n, unit),
          file=sys.stderr, flush=True)


def _n(full, quick):
    return quick if QUICK else full


def _rss_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# ------------------------------------------------- child-side functions -----
# Module-level so that they are importable/picklable under every start method.


def noop(*a):
    return None


def _echo_bytes(conn, total):
    for _ in range(total):
        conn.send_bytes(conn.recv_bytes())
    conn.close()


def _echo_client(address, authkey, total):
    from multiprocessing.connection import Client
    _echo_bytes(Client(address, authkey=authkey), total)


def _echo_simplex(rconn, wconn, total):
    for _ in range(total):
        wconn.send_bytes(rconn.recv_bytes())


def _lock_incr_child(v, n, gate, done):
    _gate_child(gate)
    lock = v.get_lock()
    for _ in range(n):
        with lock:
            v.value += 1
    done.set()


def _array_fill_child(arr, n, mode, gate, done):
    raw = arr.get_obj()
    if mode == "slice_from_list":
        data = [float(i) for i in range(n)]
    elif mode == "memoryview_bulk":
        import array as _array
        data = memoryview(_array.array("d", [float(i) for i in range(n)])).cast("B")
        dst = memoryview(raw).cast("B")
    _gate_child(gate)
    if mode == "slice_from_list":
        arr[:] = data                   # SynchronizedArray: one lock, ctypes slice store
    elif mode == "elementwise_raw":
        for i in range(n):
            raw[i] = i
    elif mode == "memoryview_bulk":
        dst[:] = data
    done.set()


def _shm_write_child(name, size, gate, conn):
    from multiprocessing import shared_memory
    shm = shared_memory.SharedMemory(name=name)
    src = b"\x05" * size
    _gate_child(gate)
    t0 = pc()
    shm.buf[:size] = src
    conn.send(pc() - t0)
    del src
    shm.close()


def _event_child(e1, e2, total):
    for _ in range(total):
        e1.wait()
        e1.clear()
        e2.set()


def _barrier_child(b, total):
    for _ in range(total):
        b.wait()


def _cond_child(cond, turn, total):
    for _ in range(total):
        with cond:
            while turn.value != 1:
                cond.wait()
            turn.value = 0
            cond.notify()


def _q_producer(q, n, gate):
    _gate_child(gate)
    put = q.put
    for i in range(n):
        put(i)
    put(None)


def ident(x):
    return x


def cpu_task(x):
    return sum(range(200_000))


def _q_echo(qin, qout, total):
    for _ in range(total):
        qout.put(qin.get())


def _mgr_dict_child(d, conn, n, reps):
    d["k"] = 0
    d["k"]
    for _ in range(reps):
        t0 = pc()
        for i in range(n):
            d["k"] = i
        t1 = pc()
        for i in range(n):
            d["k"]
        t2 = pc()
        conn.send(((t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6))
    conn.close()


def _mgr_queue_child(q, conn, n, reps):
    q.put(0)
    q.get()
    for _ in range(reps):
        t0 = pc()
        for i in range(n):
            q.put(i)
        t1 = pc()
        for i in range(n):
            q.get()
        t2 = pc()
        conn.send(((t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6))
    conn.close()


def _mgr_list_child(lst, conn, n, reps):
    # Not in mp_bench.py: the shape of _mgr_dict_child with l.append(i).
    lst.append(0)
    for _ in range(reps):
        t0 = pc()
        for i in range(n):
            lst.append(i)
        t1 = pc()
        conn.send((t1 - t0) / n * 1e6)
    conn.close()


def _mgr_dict_client(d, key, n, gate, conn):
    # Not in mp_bench.py: one of 8 clients setting its own key; reports when done.
    d[key] = -1                       # connected before the gate
    _gate_child(gate)
    for i in range(n):
        d[key] = i
    conn.send(n)
    conn.close()


def _q_big_sender(q, size, count, gate):
    data = b"x" * size
    _gate_child(gate)
    for _ in range(count):
        q.put(data)


def _stream_sender(conn, size, count, reps):
    data = b"x" * size
    for _ in range(reps):
        conn.send_bytes(b"r")          # the receiver starts its clock here
        for _ in range(count):
            conn.send_bytes(data)
    conn.close()


# ------------------------------------------------------------ benchmarks ----
# Start gate: children report ready (Barrier), the parent reads the clock and
# only then lets them go (Event), so no child work can precede the clock.


def _make_gate(n_children):
    return FORK.Barrier(n_children + 1), FORK.Event()


def _gate_child(gate):
    ready, go = gate
    ready.wait()
    go.wait()


def _gate_open(gate):
    ready, go = gate
    ready.wait()
    t0 = pc()
    go.set()
    return t0


METHODS = ("fork", "forkserver", "spawn")


def _start_join(ctx, n):
    t0 = pc()
    for _ in range(n):
        p = ctx.Process(target=noop)
        p.start()
        p.join()
    return (pc() - t0) / n * 1e6


def warm_up():
    # One start+join per method: starts the fork server (before any ballast exists).
    for method in METHODS:
        p = mp.get_context(method).Process(target=noop)
        p.start()
        p.join()


def _proc(suffix):
    counts = {"fork": _n(20, 3), "forkserver": _n(20, 3), "spawn": _n(5, 1)}
    ctxs = {m: mp.get_context(m) for m in METHODS}
    vals = {m: [] for m in METHODS}
    for r in range(REPS):
        for k in range(len(METHODS)):
            m = METHODS[(r + k) % len(METHODS)]
            vals[m].append(_start_join(ctxs[m], counts[m]))
    for m in METHODS:
        emit("proc.start_join.%s%s" % (m, suffix), vals[m], "us")


def b_proc():
    _proc("")


def b_proc_rss():
    # bytes * n of a one-byte string is a memset: every page is touched and resident.
    ballast = b"\x01" * BALLAST
    print("#meta\trss_kib_with_ballast\t%d" % _rss_kib(), file=sys.stderr)
    _proc(".rss256MiB")
    del ballast


def _roundtrip(name, make_child, send, recv, n):
    total = n * REPS + 1
    p = make_child(total)
    send()
    recv()
    vals = []
    for _ in range(REPS):
        t0 = pc()
        for _ in range(n):
            send()
            recv()
        vals.append((pc() - t0) / n * 1e6)
    p.join()
    emit(name, vals, "us")


def b_pipe_roundtrip():
    n = _n(3000, 200)
    msg = b"m" * 64
    a, b = FORK.Pipe()  # duplex: a unix socketpair

    def mk(total):
        p = FORK.Process(target=_echo_bytes, args=(b, total))
        p.start()
        return p
    _roundtrip("pipe.roundtrip.64B", mk, lambda: a.send_bytes(msg), a.recv_bytes, n)

    r1, w1 = FORK.Pipe(duplex=False)   # os.pipe() pairs
    r2, w2 = FORK.Pipe(duplex=False)

    def mk3(total):
        p = FORK.Process(target=_echo_simplex, args=(r1, w2, total))
        p.start()
        return p
    _roundtrip("pipe_simplex.roundtrip.64B", mk3, lambda: w1.send_bytes(msg), r2.recv_bytes, n)


def b_listener_roundtrip():
    from multiprocessing.connection import Listener
    n = _n(3000, 200)
    msg = b"m" * 64
    for family, address in (("unix", None), ("tcp", ("127.0.0.1", 0))):
        listener = Listener(address, family="AF_UNIX" if address is None else None,
                            authkey=b"bench key")
        conn = []

        def mk(total):
            p = FORK.Process(target=_echo_client, args=(listener.address, b"bench key", total))
            p.start()
            conn.append(listener.accept())
            return p
        _roundtrip("listener.roundtrip.%s.64B" % family, mk,
                   lambda: conn[0].send_bytes(msg), lambda: conn[0].recv_bytes(), n)
        conn[0].close()
        listener.close()


def b_pipe_throughput():
    KiB, MiB = 1024, 1024 * 1024
    for duplex, prefix in ((True, "pipe"), (False, "pipe_simplex")):
        for size, count, label in ((KiB, 20000, "1KiB"), (64 * KiB, 2000, "64KiB"), (16 * MiB, 16, "16MiB")):
            if QUICK:
                count = max(1, count // 16)
            r, w = FORK.Pipe(duplex=duplex)
            p = FORK.Process(target=_stream_sender, args=(w, size, count, REPS))
            p.start()
            w.close()
            vals = []
            for _ in range(REPS):
                r.recv_bytes()
                t0 = pc()
                got = 0
                for _ in range(count):
                    got += len(r.recv_bytes())
                dt = pc() - t0
                assert got == size * count
                vals.append(got / dt / 1e6)
            p.join()
            r.close()
            emit("%s.throughput.%s" % (prefix, label), vals, "MB/s")


# The groups below are mp_bench.py's b_lock, b_array, b_shm and b_sync, split as
# multiproc-benches groups them (threading_Lock and mp_Lock.with left out: multiproc-benches
# has no such figures).


def b_lock_uncontended():
    n = _n(200_000, 2_000)
    for label, lk in (("mp_Lock", FORK.Lock()), ("mp_RLock", FORK.RLock())):
        acq, rel = lk.acquire, lk.release
        vals = []
        for _ in range(REPS):
            t0 = pc()
            for _ in range(n):
                acq()
                rel()
            vals.append((pc() - t0) / n * 1e9)
        emit("lock.uncontended.%s.acquire_release" % label, vals, "ns")

    # Value('i') increment under its own lock, one process
    v = FORK.Value("i", 0)
    m = _n(100_000, 1_000)
    vals = []
    for _ in range(REPS):
        lock = v.get_lock()
        t0 = pc()
        for _ in range(m):
            with lock:
                v.value += 1
        vals.append((pc() - t0) / m * 1e9)
    emit("value.get_lock_increment.uncontended", vals, "ns")


def b_lock_contended():
    # two processes, 1e5 increments each, same Value/lock
    m = _n(100_000, 1_000)
    vals = []
    for _ in range(REPS):
        v = FORK.Value("i", 0)
        gate, done = _make_gate(1), FORK.Event()
        p = FORK.Process(target=_lock_incr_child, args=(v, m, gate, done))
        p.start()
        lock = v.get_lock()
        t0 = _gate_open(gate)
        for _ in range(m):
            with lock:
                v.value += 1
        done.wait()
        dt = pc() - t0
        p.join()
        assert v.value == 2 * m, v.value
        vals.append(2 * m / dt)
    emit("lock.contended2p.value_get_lock_increment", vals, "ops/s")


def b_array():
    n = _n(1_000_000, 10_000)
    for mode in ("slice_from_list", "elementwise_raw", "memoryview_bulk"):
        vals = []
        for _ in range(REPS):
            arr = FORK.Array("d", n)
            gate, done = _make_gate(1), FORK.Event()
            p = FORK.Process(target=_array_fill_child, args=(arr, n, mode, gate, done))
            p.start()
            t0 = _gate_open(gate)
            done.wait()
            dt = pc() - t0
            p.join()
            assert arr[n - 1] == float(n - 1)
            vals.append(dt * 1e3)
        emit("array.fill_from_child.1e6d.%s" % mode, vals, "ms")


def b_shm_ops():
    from multiprocessing import shared_memory
    SM = shared_memory.SharedMemory
    s = SM(create=True, size=4096)   # warm-up: starts the resource tracker
    s.close()
    s.unlink()
    n, size = _n(200, 10), 1 << 20
    vc, va, vu = [], [], []
    for _ in range(REPS):
        tc = ta = tu = 0.0
        for _ in range(n):
            t0 = pc()
            a = SM(create=True, size=size)
            t1 = pc()
            b = SM(name=a.name)
            t2 = pc()
            b.close()
            a.close()
            a.unlink()
            t3 = pc()
            tc += t1 - t0
            ta += t2 - t1
            tu += t3 - t2
        vc.append(tc / n * 1e6)
        va.append(ta / n * 1e6)
        vu.append(tu / n * 1e6)
    emit("shm.create_1MiB", vc, "us")
    emit("shm.attach_1MiB", va, "us")
    emit("shm.close_both_unlink", vu, "us")


def b_shm_big():
    from multiprocessing import shared_memory
    SM = shared_memory.SharedMemory
    big = _n(256 << 20, 16 << 20)
    dst = bytearray(b"\x01" * big)      # pre-touched destination
    dstv = memoryview(dst)
    vw, vr, ve = [], [], []
    for _ in range(REPS):
        shm = SM(create=True, size=big)
        r, w = FORK.Pipe(duplex=False)
        gate = _make_gate(1)
        p = FORK.Process(target=_shm_write_child, args=(shm.name, big, gate, w))
        p.start()
        t0 = _gate_open(gate)
        wtime = r.recv()
        t1 = pc()
        dstv[:] = shm.buf[:big]
        t2 = pc()
        p.join()
        assert dst[12345] == 5
        vw.append(big / wtime / 1e9)
        vr.append(big / (t2 - t1) / 1e9)
        ve.append(big / (t2 - t0) / 1e9)
        shm.close()
        shm.unlink()
        dst[12345] = 1
    emit("shm.child_write_256MiB_fresh", vw, "GB/s")
    emit("shm.parent_read_256MiB_after_child", vr, "GB/s")
    emit("shm.write_then_read_256MiB_end_to_end", ve, "GB/s")
    del dstv, dst


def b_sync():
    n = _n(2000, 100)
    e1, e2 = FORK.Event(), FORK.Event()

    def mk(total):
        p = FORK.Process(target=_event_child, args=(e1, e2, total))
        p.start()
        return p

    def ev_send():
        e1.set()

    def ev_recv():
        e2.wait()
        e2.clear()
    _roundtrip("event.pingpong", mk, ev_send, ev_recv, n)

    b = FORK.Barrier(2)

    def mkb(total):
        p = FORK.Process(target=_barrier_child, args=(b, total))
        p.start()
        return p
    _roundtrip("barrier2.wait", mkb, b.wait, noop, n)

    cond = FORK.Condition()
    turn = FORK.RawValue("i", 0)

    def mkc(total):
        p = FORK.Process(target=_cond_child, args=(cond, turn, total))
        p.start()
        return p

    def cond_rt():
        with cond:
            turn.value = 1
            cond.notify()
            while turn.value != 0:
                cond.wait()
    _roundtrip("condition.pingpong", mkc, cond_rt, noop, n)


def _queue_throughput(name, make_q, producers, total_items):
    per = total_items // producers
    vals = []
    for _ in range(REPS):
        q = make_q()
        gate = _make_gate(producers)
        ps = [FORK.Process(target=_q_producer, args=(q, per, gate)) for _ in range(producers)]
        for p in ps:
            p.start()
        t0 = _gate_open(gate)
        got = ended = 0
        get = q.get
        while ended < producers:
            if get() is None:
                ended += 1
            else:
                got += 1
        dt = pc() - t0
        for p in ps:
            p.join()
        assert got == per * producers
        vals.append(got / dt)
    emit(name, vals, "items/s")


def b_queue_throughput():
    # mp_bench.py's b_queue, split as multiproc-benches groups it.
    N = _n(100_000, 2_000)
    _queue_throughput("queue.throughput.1p1c", FORK.Queue, 1, N)
    _queue_throughput("queue.throughput.4p1c", FORK.Queue, 4, N)
    _queue_throughput("simplequeue.throughput.1p1c", FORK.SimpleQueue, 1, N)
    _queue_throughput("simplequeue.throughput.4p1c", FORK.SimpleQueue, 4, N)


def b_queue_roundtrip():
    for qname, mk in (("queue", FORK.Queue), ("simplequeue", FORK.SimpleQueue)):
        qa, qb = mk(), mk()

        def mkc(total):
            p = FORK.Process(target=_q_echo, args=(qa, qb, total))
            p.start()
            return p
        _roundtrip("%s.roundtrip.int" % qname, mkc, lambda: qa.put(1), qb.get, _n(1000, 100))


def b_queue_big():
    # Not in mp_bench.py: the 1 MiB item, a bytes object through a Queue.
    size, count = 1 << 20, _n(100, 8)
    vals = []
    for _ in range(REPS):
        q = FORK.Queue()
        gate = _make_gate(1)
        p = FORK.Process(target=_q_big_sender, args=(q, size, count, gate))
        p.start()
        t0 = _gate_open(gate)
        got = 0
        for _ in range(count):
            got += len(q.get())
        dt = pc() - t0
        p.join()
        assert got == size * count
        vals.append(got / dt / 1e9)
    emit("queue.item_1MiB", vals, "GB/s")


# mp_bench.py's b_pool, split into the groups of multiproc-benches; each group uses one pool
# of 2 workers (fork context), warmed up as mp_bench.py warms its pool up.


def _pool():
    pool = FORK.Pool(2)
    pool.map(ident, range(1000))  # warm-up
    return pool


def b_pool_create():
    vals = []
    for _ in range(REPS):
        t0 = pc()
        pool = FORK.Pool(2)
        pool.close()
        pool.join()
        vals.append((pc() - t0) * 1e3)
    emit("pool.create_close_join.2workers", vals, "ms")


def b_pool_map():
    with _pool() as pool:
        for label, n, cs in (("default_chunksize", _n(100_000, 2_000), None),
                             ("chunksize1", _n(10_000, 500), 1)):
            vals = []
            for _ in range(REPS):
                t0 = pc()
                out = pool.map(ident, range(n), cs)
                vals.append(n / (pc() - t0))
                assert len(out) == n
            emit("pool.map.trivial.%s" % label, vals, "tasks/s")


def b_pool_apply():
    with _pool() as pool:
        n = _n(500, 50)
        vals = []
        for _ in range(REPS):
            t0 = pc()
            for _ in range(n):
                pool.apply_async(noop).get()
            vals.append((pc() - t0) / n * 1e6)
        emit("pool.apply_async.roundtrip", vals, "us")


def b_pool_imap():
    with _pool() as pool:
        for label, n, cs in (("chunksize1", _n(10_000, 500), 1),
                             ("chunksize100", _n(100_000, 2_000), 100)):
            vals = []
            for _ in range(REPS):
                t0 = pc()
                k = sum(1 for _ in pool.imap_unordered(ident, range(n), cs))
                vals.append(n / (pc() - t0))
                assert k == n
            emit("pool.imap_unordered.trivial.%s" % label, vals, "tasks/s")


def b_pool_cpu():
    items = _n(200, 20)
    with _pool() as pool:
        vs, vp, vx = [], [], []
        for _ in range(max(3, REPS // 2 + 1)):
            t0 = pc()
            for i in range(items):
                cpu_task(i)
            ts = pc() - t0
            t0 = pc()
            pool.map(cpu_task, range(items))
            tp = pc() - t0
            vs.append(ts * 1e3)
            vp.append(tp * 1e3)
            vx.append(ts / tp)
        emit("pool.map.cpu200x_sum_range_2e5.serial", vs, "ms")
        emit("pool.map.cpu200x_sum_range_2e5.pool2", vp, "ms")
        emit("pool.map.cpu200x_sum_range_2e5.speedup", vx, "x")


def b_executor():
    # mp_bench.py's b_executor.
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(max_workers=2, mp_context=FORK) as ex:
        list(ex.map(ident, range(100)))  # warm-up: workers started
        n = _n(500, 50)
        vals = []
        for _ in range(REPS):
            t0 = pc()
            for _ in range(n):
                ex.submit(noop).result()
            vals.append((pc() - t0) / n * 1e6)
        emit("executor.submit_result.roundtrip", vals, "us")
        for label, n, cs in (("chunksize1", _n(10_000, 500), 1),
                             ("chunksize1000", _n(100_000, 2_000), 1000)):
            vals = []
            for _ in range(REPS):
                t0 = pc()
                k = sum(1 for _ in ex.map(ident, range(n), chunksize=cs))
                vals.append(n / (pc() - t0))
                assert k == n
            emit("executor.map.trivial.%s" % label, vals, "tasks/s")


def b_manager():
    # mp_bench.py's b_manager, exactly: one fork Manager, a child per proxy timing n ops per rep.
    n = _n(2000, 100)
    with FORK.Manager() as mgr:
        for label, proxy, target in (("dict", mgr.dict(), _mgr_dict_child),
                                     ("queue", mgr.Queue(), _mgr_queue_child)):
            r, w = FORK.Pipe(duplex=False)
            p = FORK.Process(target=target, args=(proxy, w, n, REPS))
            p.start()
            res = [r.recv() for _ in range(REPS)]
            p.join()
            ops = ("set", "get") if label == "dict" else ("put", "get")
            emit("manager.%s.%s_from_child" % (label, ops[0]), [x[0] for x in res], "us")
            emit("manager.%s.%s_from_child" % (label, ops[1]), [x[1] for x in res], "us")

        # Not in mp_bench.py: list append, the same shape.
        lst = mgr.list()          # held here: Process.start() drops its args in the parent
        r, w = FORK.Pipe(duplex=False)
        p = FORK.Process(target=_mgr_list_child, args=(lst, w, n, REPS))
        p.start()
        res = [r.recv() for _ in range(REPS)]
        p.join()
        emit("manager.list.append_from_child", res, "us")

        # Not in mp_bench.py: 8 clients of one dict proxy, each setting its own key n times.
        clients = 8
        vals = []
        for _ in range(REPS):
            d = mgr.dict()
            gate = _make_gate(clients)
            conns, ps = [], []
            for c in range(clients):
                r, w = FORK.Pipe(duplex=False)
                p = FORK.Process(target=_mgr_dict_client, args=(d, "k%d" % c, n, gate, w))
                p.start()
                w.close()
                conns.append(r)
                ps.append(p)
            t0 = _gate_open(gate)
            done = sum(r.recv() for r in conns)
            dt = pc() - t0
            for p in ps:
                p.join()
            assert done == clients * n
            assert all(d["k%d" % c] == n - 1 for c in range(clients))
            vals.append(done / dt)
        emit("manager.dict.set_8clients", vals, "ops/s")

    # Not in mp_bench.py: a fork Manager's start (server process, handshake) and shutdown.
    k = _n(5, 2)
    vals = []
    for _ in range(REPS):
        t0 = pc()
        for _ in range(k):
            m = FORK.Manager()        # SyncManager(ctx=FORK), started
            m.shutdown()
        vals.append((pc() - t0) / k * 1e3)
    emit("manager.start_shutdown", vals, "ms")


BENCHES = [
    ("proc", b_proc),
    ("proc.rss256MiB", b_proc_rss),
    ("pipe.roundtrip", b_pipe_roundtrip),
    ("pipe.throughput", b_pipe_throughput),
    ("listener.roundtrip", b_listener_roundtrip),
    ("locks.uncontended", b_lock_uncontended),
    ("locks.contended2p", b_lock_contended),
    ("array", b_array),
    ("shm.1MiB", b_shm_ops),
    ("shm.256MiB", b_shm_big),
    ("sync.pingpong", b_sync),
    ("queue.throughput", b_queue_throughput),
    ("queue.roundtrip", b_queue_roundtrip),
    ("queue.item_1MiB", b_queue_big),
    ("pool.create", b_pool_create),
    ("pool.map", b_pool_map),
    ("pool.apply_async", b_pool_apply),
    ("pool.imap_unordered", b_pool_imap),
    ("pool.cpu", b_pool_cpu),
    ("executor", b_executor),
    ("manager", b_manager),
]


def main(argv):
    global REPS, FORK, QUICK
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated group names (see --list)")
    ap.add_argument("--quick", action="store_true", help="tiny iteration counts (a smoke test)")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    if a.list:
        for g, _ in BENCHES:
            print(g)
        return
    QUICK = a.quick
    REPS = max(1, a.reps if a.reps is not None else (3 if QUICK else REPS))
    FORK = mp.get_context("fork")
    only = [x for x in a.only.split(",") if x]
    print("#meta\tsuite\tmp_twin.py", file=sys.stderr)
    print("#meta\tpython\t%s" % sys.version.split()[0], file=sys.stderr)
    print("#meta\tdefault_start_method\t%s" % mp.get_start_method(), file=sys.stderr)
    print("#meta\tcpus\t%d" % os.cpu_count(), file=sys.stderr)
    print("#meta\treps\t%d" % REPS, file=sys.stderr)
    print("#meta\tquick\t%s" % QUICK, file=sys.stderr)
    t_all = pc()
    selected = [(g, fn) for g, fn in BENCHES
                if not only or any(g == o or g.startswith(o + ".") for o in only)]
    if any(g.startswith("proc") for g, _ in selected):
        warm_up()
    for g, fn in selected:
        t0 = pc()
        fn()
        print("#meta\tgroup_seconds\t%s\t%.1f" % (g, pc() - t0), file=sys.stderr, flush=True)
    print("#meta\ttotal_seconds\t%.1f" % (pc() - t_all), file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
