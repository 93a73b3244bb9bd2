"""Python's multiprocessing.Pool (fork) on the workloads of `cargo bench --bench peers`.

Prints `key=value` figures: start_ms (Pool(2) created to first apply result, median),
apply_us (one apply round trip on a warm pool, median), async_us (50k apply_async then
get, per task, median)."""
import statistics
import sys
import time
from multiprocessing import get_context


def t1(x):
    return x * 10


def main():
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    ctx = get_context("fork")

    starts = []
    for _ in range(10):
        t = time.perf_counter()
        with ctx.Pool(workers) as pool:
            assert pool.apply(t1, (1,)) == 10
            starts.append(time.perf_counter() - t)

    with ctx.Pool(workers) as pool:
        for i in range(200):
            pool.apply(t1, (i,))
        trips = []
        for i in range(2000):
            t = time.perf_counter()
            pool.apply(t1, (i,))
            trips.append(time.perf_counter() - t)

        asyncs = []
        for _ in range(3):
            t = time.perf_counter()
            handles = [pool.apply_async(t1, (i,)) for i in range(50_000)]
            for h in handles:
                h.get()
            asyncs.append((time.perf_counter() - t) / 50_000)

    print(
        f"start_ms={statistics.median(starts) * 1e3:.3f} "
        f"apply_us={statistics.median(trips) * 1e6:.2f} "
        f"async_us={statistics.median(asyncs) * 1e6:.2f}"
    )


if __name__ == "__main__":
    main()
