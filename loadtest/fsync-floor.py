#!/usr/bin/env python3
"""The disk's part of a durable commit: how long fsync and fdatasync of one commit-sized
overwrite take on this machine, back to back and spaced like the 1:1 benchmark's commits
(10 pairs x 20 msg/s = one commit every 5 ms).

An acknowledged message waits for one such sync (SQLite `synchronous=full`, a WAL commit), so
the p50 printed for the spaced case is a floor under the 1:1 row's send->ack p50 that no
change to the server can remove. Writes go to a preallocated file in DIR (default: the
current directory; use the disk the data directory is on), as the WAL's are after its first
cycle.

    python3 loadtest/fsync-floor.py [DIR] [--kib 28] [--rounds 300] [--gap-ms 5]
"""

import argparse
import os
import statistics
import tempfile
import time


def measure(fd, size, rounds, sync, gap):
    buf = os.urandom(size)
    times = []
    for i in range(rounds):
        os.pwrite(fd, buf, i * size)
        t = time.perf_counter()
        sync(fd)
        times.append((time.perf_counter() - t) * 1e3)
        if gap:
            time.sleep(gap)
    times.sort()
    q = statistics.quantiles(times, n=100)
    return q[49], q[89], q[98]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", nargs="?", default=".")
    p.add_argument("--kib", type=int, default=28, help="bytes per commit (7 WAL frames)")
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--gap-ms", type=float, default=5.0)
    a = p.parse_args()
    size = a.kib * 1024
    with tempfile.NamedTemporaryFile(dir=a.dir, prefix="fsync-floor.") as f:
        fd = f.fileno()
        os.pwrite(fd, b"\0" * size * a.rounds, 0)
        os.fsync(fd)
        print(f"{a.kib} KiB overwrite in {os.path.abspath(a.dir)}, {a.rounds} rounds: "
              "p50 / p90 / p99 ms")
        for gap in (0.0, a.gap_ms / 1e3):
            for name, sync in (("fsync", os.fsync), ("fdatasync", os.fdatasync)):
                p50, p90, p99 = measure(fd, size, a.rounds, sync, gap)
                spacing = f"{a.gap_ms:g} ms apart" if gap else "back to back"
                print(f"  {name:<9} {spacing:<14} {p50:.3f} / {p90:.3f} / {p99:.3f}")


if __name__ == "__main__":
    main()
