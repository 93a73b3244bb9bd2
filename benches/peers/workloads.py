"""Python's multiprocessing.Pool (fork) on the workloads of `cargo bench --bench
workloads`, on the data that bench wrote to DIR: gzip of 64 x 1 MiB of text (level 6),
JSON lines parsed into dicts, and SHA-256 of 128 files. Usage: workloads.py WORKERS DIR.
Prints `gzip_s=<s> json_s=<s> hash_s=<s>`: the median of 5 timed runs of `pool.map`
(after one untimed one), with the default chunk size, results back in the parent."""
import gzip
import hashlib
import json
import os
import statistics
import sys
import time
from multiprocessing import get_context


def compress(buf):
    return gzip.compress(buf, compresslevel=6)


def hash_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(64 << 10)
            if not block:
                break
            h.update(block)
    return h.digest()


def timed(pool, fn, items):
    pool.map(fn, items)
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        pool.map(fn, items)
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main():
    workers = int(sys.argv[1])
    data = sys.argv[2]
    with open(os.path.join(data, "buffers.bin"), "rb") as f:
        blob = f.read()
    buffers = [blob[i : i + (1 << 20)] for i in range(0, len(blob), 1 << 20)]
    with open(os.path.join(data, "lines.jsonl"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    files = sorted(
        os.path.join(data, n) for n in os.listdir(data) if n.startswith("file")
    )
    with get_context("fork").Pool(workers) as pool:
        gzip_s = timed(pool, compress, buffers)
        json_s = timed(pool, json.loads, lines)
        hash_s = timed(pool, hash_file, files)
    print(f"gzip_s={gzip_s:.4f} json_s={json_s:.4f} hash_s={hash_s:.4f}")


if __name__ == "__main__":
    main()
