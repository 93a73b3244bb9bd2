"""Python's multiprocessing.Pool(2) (fork) on 24 equal CPU-bound tasks, beside the same
tasks run one after another; 9 pairs of a sequential and a pool run, back to back, so that
a slow minute of a shared machine hits both sides of a pair alike. Prints
`seq_s=<s> pool_s=<s> speedup=<x>`: the median times, and the median of the pairs' ratios
(the figure `cargo bench --bench peers` shows)."""
import statistics
import sys
import time
from multiprocessing import get_context


def burn(n):
    h = 0
    for i in range(n):
        h = (h * 31 + i) & 0xFFFFFFFF
    return h


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
    tasks = [n] * 24
    seq = []
    par = []
    with get_context("fork").Pool(2) as pool:
        pool.map(burn, [10] * 4)
        for _ in range(9):
            t = time.perf_counter()
            [burn(x) for x in tasks]
            seq.append(time.perf_counter() - t)
            t = time.perf_counter()
            pool.map(burn, tasks, chunksize=1)
            par.append(time.perf_counter() - t)
    ratio = statistics.median(s / p for s, p in zip(seq, par))
    print(
        f"seq_s={statistics.median(seq):.4f} pool_s={statistics.median(par):.4f} "
        f"speedup={ratio:.4f}"
    )


if __name__ == "__main__":
    main()
