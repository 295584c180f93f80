"""Big task output: throughput from a task's stdout to the server, and the memory it takes.

    python bench/output.py [--sizes 250,1000]   (MB)

One server (SQLite: output never goes into the database) and one worker of concurrency 1,
real processes on loopback (tests/procs.py). Each run is one task printing SIZE MB,
`yes ... | head -c SIZE`; the worker streams it to the server in chunks by offset. The time
runs from the submission to the task succeeded; the peak RSS of the server and of the
worker process (psutil, sampled every 50 ms during the run) must not grow with the output:
the 250 MB and the 1 GB runs should show about the same peaks. The stored size is checked
against what the task printed.
"""
import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from procs import Procs, wait_until  # noqa: E402

from scitq.client import Client  # noqa: E402

MB = 1_000_000


class Peak(threading.Thread):
    """Samples the RSS of some processes until stopped; keeps the highest of each."""

    def __init__(self, procs, every=0.05):
        super().__init__(daemon=True)
        self.procs = {name: psutil.Process(pid) for name, pid in procs.items()}
        self.peak = dict.fromkeys(procs, 0)
        self.every = every
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for name, p in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], p.memory_info().rss)
                except psutil.Error:
                    pass
            self.stopping.wait(self.every)

    def stop(self):
        self.stopping.set()
        self.join()
        return self.peak


def measure(size_mb, workdir):
    procs = Procs(workdir)
    try:
        server = procs.server(f"sqlite:///{workdir}/out.db", "--log-level", "WARNING")
        worker = procs.worker(server.url, "out", 1, "--log-level", "WARNING")
        with Client(server.url) as c:
            wait_until(lambda: c.workers(), 30, what="worker registration")
            c.add_task("echo warm", batch="warmup")
            c.wait_batch("warmup", interval=0.1, timeout=30)
            idle = {name: psutil.Process(p.pid).memory_info().rss
                    for name, p in (("server", server), ("worker", worker))}
            peak = Peak({"server": server.pid, "worker": worker.pid})
            peak.start()
            t0 = time.perf_counter()
            tid = c.add_task(f"yes 'scitq output line, the same again and again' | head -c {size_mb * MB}",
                             batch="output")["id"]
            task = wait_until(lambda: (t := c.task(tid))["status"] not in ("pending", "assigned", "running")
                              and t, 3600, interval=0.2, what="the task")
            elapsed = time.perf_counter() - t0
            peaks = peak.stop()
            stored = task["executions"][-1]["stdout_bytes"]
            if task["status"] != "succeeded" or stored != size_mb * MB:
                raise RuntimeError(f"task {task['status']}, {stored} bytes stored of {size_mb * MB}")
            return elapsed, idle, peaks
    finally:
        procs.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="250,1000", help="MB printed by the task, comma-separated")
    args = ap.parse_args()
    rows = []
    for size in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{size} MB...", file=sys.stderr, flush=True)
            rows.append((size, *measure(size, Path(tmp))))
    print(f"\none task printing to stdout, worker -> server on loopback "
          f"({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"{'output':>9}{'seconds':>9}{'MB/s':>8}{'server RSS MB idle/peak':>26}"
          f"{'worker RSS MB idle/peak':>26}")
    for size, elapsed, idle, peak in rows:
        print(f"{size:>6} MB{elapsed:>9.1f}{size / elapsed:>8.0f}"
              f"{idle['server'] / MB:>17.0f} / {peak['server'] / MB:<6.0f}"
              f"{idle['worker'] / MB:>17.0f} / {peak['worker'] / MB:<6.0f}")
    if len(rows) > 1:
        growth = {k: max(r[3][k] for r in rows) / min(r[3][k] for r in rows) for k in ("server", "worker")}
        bounded = all(g < 1.25 for g in growth.values())
        print(f"peak RSS, largest output / smallest: server x{growth['server']:.2f}, worker "
              f"x{growth['worker']:.2f} ({'bounded' if bounded else 'GROWS with the output'})")


if __name__ == "__main__":
    main()
