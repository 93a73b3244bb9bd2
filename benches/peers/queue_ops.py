"""Python's queues on the workload of `cargo bench --bench peers`: two producer processes
put N ints each; the parent gets all 2N. Prints `mp_queue=<msgs/s> manager_queue=<msgs/s>`
(medians of 3). `mp.Queue` cannot be passed to a Pool, so its producers are Processes;
`Manager().Queue()` is what a Pool needs."""
import statistics
import sys
import time
from multiprocessing import Manager, Process, get_context


def produce(q, n):
    for i in range(n):
        q.put(i)


def rate(make_queue, n, use_pool):
    q = make_queue()
    t = time.perf_counter()
    if use_pool:
        pool = get_context("fork").Pool(2)
        rs = [pool.apply_async(produce, (q, n)) for _ in range(2)]
    else:
        procs = [Process(target=produce, args=(q, n)) for _ in range(2)]
        for p in procs:
            p.start()
    for _ in range(2 * n):
        q.get()
    elapsed = time.perf_counter() - t
    if use_pool:
        for r in rs:
            r.get()
        pool.close()
        pool.join()
    else:
        for p in procs:
            p.join()
    return 2 * n / elapsed


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    ctx = get_context("fork")
    mp = statistics.median(rate(ctx.Queue, n, False) for _ in range(3))
    with Manager() as m:
        managed = statistics.median(rate(m.Queue, n // 10, True) for _ in range(3))
    print(f"mp_queue={mp:.0f} manager_queue={managed:.0f}")


if __name__ == "__main__":
    main()
