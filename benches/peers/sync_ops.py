"""Python's multiprocessing.Event between two processes (fork): a ping-pong of two
events, `rounds` times. Prints `event_us`, one set -> wake latency (half a round trip),
median of 5 runs, for `cargo bench --bench sync`."""
import statistics
import sys
import time
from multiprocessing import get_context


def pong(a, b, rounds):
    for _ in range(rounds):
        a.wait()
        a.clear()
        b.set()


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


if __name__ == "__main__":
    main()
