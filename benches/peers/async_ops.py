"""asyncio awaiting process-pool work, the Python way: 10,000 `run_in_executor` calls on
a `ProcessPoolExecutor` of 2 (fork), gathered at once. Prints `awaited_per_s` (median of
5 rounds) for `cargo bench --bench async_results`."""
import asyncio
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


def t1(x):
    return x * 10


async def rounds(ex, n):
    loop = asyncio.get_running_loop()
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        results = await asyncio.gather(*(loop.run_in_executor(ex, t1, i) for i in range(n)))
        elapsed = time.perf_counter() - t
        assert results[n - 1] == (n - 1) * 10
        rates.append(n / elapsed)
    return statistics.median(rates)


def main():
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as ex:
        list(ex.map(t1, range(100)))  # warm
        rate = asyncio.run(rounds(ex, n))
    print(f"awaited_per_s={rate:.0f}")


if __name__ == "__main__":
    main()
