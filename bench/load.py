"""Load: 200 simulated workers polling and reporting against one server, with auth on.

    python bench/load.py [--workers 200] [--seconds 300] [--rate 50] [--db postgresql|sqlite]

A real `scitq server --auth --threads 256` on a throwaway PostgreSQL; the workers are
asyncio clients in this process, each with a worker token of its own: register, long-poll
(as the real worker does, `wait` 20 s), and for each assignment report it running, send a
line of output, and report it succeeded, in two report calls. A feeder submits `--rate`
tasks a second. Printed: calls and errors per kind, p50/p99 latency of each kind (a poll's
time is how long it waited, so it is shown apart), tasks done, and the server's CPU use.
Every call goes to 127.0.0.1.
"""
import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # noqa: E402
from procs import Procs, wait_until  # noqa: E402

from scitq.client import Client  # noqa: E402


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else 0.0


class Stats:
    def __init__(self):
        self.times = {}
        self.errors = {}
        self.samples = {}

    def call(self, kind, seconds, ok, sample=None):
        self.times.setdefault(kind, []).append(seconds)
        if not ok:
            self.errors[kind] = self.errors.get(kind, 0) + 1
            self.samples.setdefault(kind, sample)


async def timed(stats, kind, coro):
    t0 = time.perf_counter()
    try:
        resp = await coro
        ok = resp.status_code < 400
        stats.call(kind, time.perf_counter() - t0, ok, None if ok else f"{resp.status_code} {resp.text[:200]}")
        return resp if ok else None
    except httpx.HTTPError as exc:
        stats.call(kind, time.perf_counter() - t0, False, repr(exc))
        return None


async def worker(url, name, token, stats, stop, done):
    async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        resp = await timed(stats, "register", http.post("/workers", json={"name": name, "concurrency": 2}))
        if resp is None:
            return
        wid = resp.json()["id"]
        held = set()
        while not stop.is_set():
            resp = await timed(stats, "poll", http.post(f"/workers/{wid}/poll", json={
                "known": sorted(held), "wait": 20, "concurrency": 2, "prefetch": 0,
                "status": "running", "stats": {"load": 0.5, "memory": 20.0, "disk": 10.0}}))
            if resp is None:
                await asyncio.sleep(1)
                continue
            for a in resp.json()["assignments"]:
                eid = a["execution_id"]
                held.add(eid)
                await timed(stats, "report", http.post(f"/workers/{wid}/reports", json={
                    "reports": [{"execution_id": eid, "status": "running", "pid": 1}]}))
                line = f"task {a['task_id']} done\n".encode()
                r = await timed(stats, "report", http.post(f"/workers/{wid}/reports", json={
                    "reports": [{"execution_id": eid, "status": "succeeded", "return_code": 0,
                                 "stdout": {"offset": 0, "data": base64.b64encode(line).decode()}}]}))
                if r is not None:
                    held.discard(eid)
                    done[0] += 1


async def feeder(url, token, rate, stats, stop):
    async with httpx.AsyncClient(base_url=url + "/api/v1", timeout=60,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        while not stop.is_set():
            t0 = time.monotonic()
            await timed(stats, "submit", http.post("/tasks/bulk", json={
                "batch": "load", "tasks": [{"command": "true"} for _ in range(rate)]}))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


async def drive(url, admin, tokens, seconds, rate):
    stats, stop, done = Stats(), asyncio.Event(), [0]
    tasks = [asyncio.create_task(worker(url, f"sim{i:03d}", tok, stats, stop, done))
             for i, tok in enumerate(tokens)]
    tasks.append(asyncio.create_task(feeder(url, admin, rate, stats, stop)))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait(tasks, timeout=60)
    return stats, done[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--rate", type=int, default=50, help="tasks submitted a second")
    ap.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        cluster = None
        if args.db == "postgresql":
            cluster = pgcluster.start(tmp / "pg")
            db_url = cluster.create_database("load")
        else:
            db_url = f"sqlite:///{tmp}/load.db"
        procs = Procs(tmp)
        try:
            server = procs.server(db_url, "--auth", "--threads", str(args.workers + 56),
                                  "--log-level", "WARNING")
            admin = (tmp / "data" / "admin.token").read_text().strip()
            with Client(server.url, token=admin) as c:
                tokens = [c.create_token(f"sim{i:03d}", "worker")["token"] for i in range(args.workers)]
            proc = psutil.Process(server.pid)
            cpu0, t0 = proc.cpu_times(), time.monotonic()
            stats, done = asyncio.run(drive(server.url, admin, tokens, args.seconds, args.rate))
            cpu1, wall = proc.cpu_times(), time.monotonic() - t0
            rss = proc.memory_info().rss
            with Client(server.url, token=admin) as c:
                wait_until(lambda: c.workers(), 10)
                counts = c.batch("load")["counts"]
        finally:
            procs.cleanup()
            if cluster:
                cluster.stop()
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    print(f"{args.workers} simulated workers for {args.seconds:.0f} s on {args.db}, {args.rate} tasks/s "
          f"submitted ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"{'call':<10}{'count':>9}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for kind in ("register", "submit", "report", "poll"):
        ms = [t * 1000 for t in stats.times.get(kind, [])]
        print(f"{kind:<10}{len(ms):>9}{stats.errors.get(kind, 0):>8}{pct(ms, 50):>9.1f}"
              f"{pct(ms, 99):>9.1f}{max(ms, default=0):>9.1f}")
    print("(a poll's time includes its wait for work, up to 20 s)")
    print(f"tasks done {done}; batch: {counts['succeeded']} succeeded, {counts['remaining']} remaining")
    print(f"server CPU {busy:.1f} s over {wall:.0f} s = {100 * busy / wall:.0f}% of one core; "
          f"RSS {rss / 2**20:.0f} MiB")
    for kind, sample in stats.samples.items():
        print(f"first {kind} error: {sample}")
    if any(stats.errors.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
