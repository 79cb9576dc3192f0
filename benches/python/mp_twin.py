#!/usr/bin/env python3
"""Python twin of multiproc-benches: CPython's multiprocessing on the same figures.

Run by `cargo xtask bench` next to the Rust suite (benches/src/main.rs). The figure names,
the output contract and the measurement code are those of the reference harness
(shared/bench/python/mp_bench.py), restricted to the figures multiproc-benches prints:

  proc.start_join.{fork,forkserver,spawn}             start+join of a no-op child, us per process
  proc.start_join.{fork,forkserver,spawn}.rss256MiB   the same from a parent holding 256 MiB
  pipe.roundtrip.64B, pipe_simplex.roundtrip.64B      send_bytes 64 B, child echoes, us per round trip
  pipe.throughput.{1KiB,64KiB,16MiB}                  child sends, parent recv_bytes, MB/s (10^6)
  pipe_simplex.throughput.{1KiB,64KiB,16MiB}          the same over Pipe(duplex=False)

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


def _echo_simplex(rconn, wconn, total):
    for _ in range(total):
        wconn.send_bytes(rconn.recv_bytes())


def _stream_sender(conn, size, count, reps):
    data = b"x" * size
    for _ in range(reps):
        conn.send_bytes(b"r")          # the receiver starts its clock here
        for _ in range(count):
            conn.send_bytes(data)
    conn.close()


# ------------------------------------------------------------ benchmarks ----

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


BENCHES = [
    ("proc", b_proc),
    ("proc.rss256MiB", b_proc_rss),
    ("pipe.roundtrip", b_pipe_roundtrip),
    ("pipe.throughput", b_pipe_throughput),
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
