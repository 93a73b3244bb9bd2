"""Python's multiprocessing.Pool(2).map over 1,000,000 ints (x * 10), the peer figure for
`cargo bench --bench peers`. Prints one line: `python_pool_map ns_per_item=<median>`."""
import os
import statistics
import sys
import time
from multiprocessing import get_context


def t1(x):
    return x * 10


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    data = list(range(n))
    with get_context("fork").Pool(workers) as pool:
        pool.map(t1, range(1000))  # warm: workers started and imported
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            out = pool.map(t1, data)
            times.append(time.perf_counter() - start)
            assert out[-1] == (n - 1) * 10
    med = statistics.median(times)
    print(f"python_pool_map ns_per_item={med / n * 1e9:.2f} runs={runs} workers={workers} pid={os.getpid()}")


if __name__ == "__main__":
    main()
