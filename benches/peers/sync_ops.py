"""Python's multiprocessing primitives, for `cargo bench --bench sync`: `event_us`, one
Event set -> wake latency between two processes (fork), half a round trip of a
ping-pong of two events; `lock_ns`, one uncontended Lock acquire and release;
`barrier_us`, one round of a Barrier of 2 processes. Medians of 5 runs."""
import statistics
import sys
import time
from multiprocessing import get_context


def pong(a, b, rounds):
    for _ in range(rounds):
        a.wait()
        a.clear()
        b.set()


def party(barrier, rounds):
    for _ in range(rounds):
        barrier.wait()


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    ctx = get_context("fork")
    runs = []
    for _ in range(5):
        a, b = ctx.Event(), ctx.Event()
        p = ctx.Process(target=pong, args=(a, b, rounds))
        p.start()
        t = time.perf_counter()
        for _ in range(rounds):
            a.set()
            b.wait()
            b.clear()
        runs.append((time.perf_counter() - t) / rounds / 2 * 1e6)
        p.join()
    print(f"event_us={statistics.median(runs):.2f}")
    lock = ctx.Lock()
    n = 200_000
    locks = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            lock.acquire()
            lock.release()
        locks.append((time.perf_counter() - t) / n * 1e9)
    print(f"lock_ns={statistics.median(locks):.1f}")
    laps = []
    for _ in range(5):
        barrier = ctx.Barrier(2)
        p = ctx.Process(target=party, args=(barrier, rounds))
        p.start()
        t = time.perf_counter()
        for _ in range(rounds):
            barrier.wait()
        laps.append((time.perf_counter() - t) / rounds * 1e6)
        p.join()
    print(f"barrier_us={statistics.median(laps):.2f}")


if __name__ == "__main__":
    main()
