"""Python's multiprocessing.Pool(2) (fork) receiving a 200 MB bytes argument in each of 2
workers: `pool.map(len, [data, data])`, median of 5. Prints `big_ms=<median>`."""
import statistics
import sys
import time
from multiprocessing import get_context


def size(b):
    return len(b)


def main():
    mb = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    data = b"x" * (mb * 1000 * 1000)
    with get_context("fork").Pool(2) as pool:
        pool.map(size, [b"warm", b"up"])
        times = []
        for _ in range(5):
            t = time.perf_counter()
            assert pool.map(size, [data, data], chunksize=1) == [len(data)] * 2
            times.append(time.perf_counter() - t)
    print(f"big_ms={statistics.median(times) * 1e3:.1f}")


if __name__ == "__main__":
    main()
