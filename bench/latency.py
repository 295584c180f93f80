"""Latency on an idle worker, from the user's side: p50/p99 over N tasks, SQLite and PostgreSQL.

    python bench/latency.py [--tasks 200]

Two figures per task, both measured from this client's calls, with default settings:
- submit -> start: from just before `Client.add_task` sends the task to the instant its
  process starts (the task prints `date +%s%N`): HTTP submit, dispatch, the worker's long
  poll waking, the process spawn;
- end -> wait returns: from that instant (the task ends right after printing) to the return
  of `Client.wait_batch`, which waits on the server for the batch's last end.
The server's own view (running report minus creation) is printed beside them.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # noqa: E402
from procs import Procs, wait_until  # noqa: E402

from scitq.client import Client  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def measure(db_url, n, workdir):
    procs = Procs(workdir)
    try:
        server = procs.server(db_url, "--log-level", "WARNING")
        procs.worker(server.url, "idle", 1, "--log-level", "WARNING")
        with Client(server.url) as c:
            wait_until(lambda: c.workers(), 30, what="worker registration")
            c.add_task("true", batch="warmup")
            c.wait_batch("warmup", interval=0.05, timeout=30)
            wall, server_view, ends = [], [], []
            for _ in range(n):
                t0 = time.time_ns()
                tid = c.add_task("date +%s%N", batch="latency")["id"]
                c.wait_batch("latency", timeout=30)
                returned = time.time_ns()
                task = c.task(tid)
                started_ns = int(c.output(tid)[0])
                wall.append((started_ns - t0) / 1e6)
                ends.append((returned - started_ns) / 1e6)
                ex = task["executions"][0]
                server_view.append((datetime.fromisoformat(ex["started_at"]) -
                                    datetime.fromisoformat(task["created_at"])).total_seconds() * 1e3)
            return wall, server_view, ends
    finally:
        procs.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        rows.append(("sqlite", *measure(f"sqlite:///{tmp}/lat.db", args.tasks, _dir(tmp, "s"))))
        cluster = pgcluster.start(tmp / "pg")
        try:
            url = cluster.create_database("latency")
            rows.append(("postgresql", *measure(url, args.tasks, _dir(tmp, "p"))))
        finally:
            cluster.stop()
    print(f"submit-to-start on an idle worker, {args.tasks} tasks each, ms "
          f"({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"{'database':<12}{'view':<28}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for name, wall, server_view, ends in rows:
        for view, values in (("submit -> process start", wall), ("server: created -> running", server_view),
                             ("end -> wait_batch returns", ends)):
            print(f"{name:<12}{view:<28}" + "".join(f"{pct(values, p):>8.1f}" for p in (50, 90, 99))
                  + f"{max(values):>8.1f}")
    goal = max(statistics.median(w) for _, w, _, _ in rows)
    print(f"goal submit -> start p50 < 15 ms: {'met' if goal < 15 else 'MISSED'} (worst p50 {goal:.1f} ms)")
    goal = max(statistics.median(e) for _, _, _, e in rows)
    print(f"goal end -> wait return p50 < 50 ms: {'met' if goal < 50 else 'MISSED'} (worst p50 {goal:.1f} ms)")


def _dir(tmp, name):
    d = tmp / name
    d.mkdir()
    return d


if __name__ == "__main__":
    main()
