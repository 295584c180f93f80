"""What a busy worker's request costs the server: one end, the start queued behind it, `more`.

    python bench/hotpath.py [--workers 20] [--requests 400] [--rounds 3]

Under a fleet of long tasks each task costs the server one such request (the answer brings
the next task), so its CPU sets how many tasks a second one server core can serve. Here
`--workers` clients, each a registered worker (concurrency 2, prefetch 1) with a worker token
of its own, send that request back-to-back with the real wire protocol against one
`scitq server --auth` on a throwaway PostgreSQL, `--requests` each; the bench prints the
server's CPU time per request (user + system, from /proc), PostgreSQL's (all its processes),
the rate, and p50/p99 of the calls. CPU per request is what to compare between two commits
(alternate them in one sitting): rates move with the machine's load, CPU time much less.
Every call goes to 127.0.0.1.
"""
import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fleet import pct  # noqa: E402  (the bench's own directory is on the path)


class BusyWorker(threading.Thread):
    """A worker whose tasks end as soon as they start: each request ends one, starts the
    one queued behind it and asks for the next (the answer brings it)."""

    def __init__(self, url, name, token, requests, start_gate):
        super().__init__(daemon=True)
        import httpx
        self.http = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 timeout=60)
        self.name, self.requests, self.gate = name, requests, start_gate
        self.times, self.errors = [], []

    def call(self, path, body):
        r = self.http.post(path, json=body)
        if r.status_code >= 400:
            raise RuntimeError(f"{path}: HTTP {r.status_code} {r.text[:200]}")
        return r.json()

    def run(self):
        try:
            w = self.call("/workers", {"name": self.name, "concurrency": 2, "prefetch": 1})
            self.path = f"/workers/{w['id']}/reports"
            held = [a["execution_id"] for a in self.call(f"/workers/{w['id']}/poll", {"wait": 5})["assignments"]]
            while len(held) < 3:
                held += [a["execution_id"] for a in self.call(self.path, {"reports": [], "more": True})["assignments"]]
            running = held[:2]
            self.call(self.path, {"reports": [{"execution_id": e, "status": "running", "pid": 1} for e in running]})
            queued = held[2:]
            self.gate.wait()
            for _ in range(self.requests):
                ending, starting = running.pop(0), queued.pop(0)
                t0 = time.perf_counter()
                answer = self.call(self.path, {"more": True, "queued": 0, "reports": [
                    {"execution_id": ending, "status": "succeeded", "return_code": 0},
                    {"execution_id": starting, "status": "running", "pid": 1}]})
                self.times.append((time.perf_counter() - t0) * 1000)
                running.append(starting)
                queued += [a["execution_id"] for a in answer["assignments"]]
                if not queued:
                    raise RuntimeError("the server brought no next task")
        except Exception as exc:
            self.errors.append(repr(exc))
            self.gate.abort()


def cpu_of(procs):
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:
            pass
    return total


def postgres_processes():
    """PostgreSQL's processes now (its backends for the server's pool exist by then)."""
    import psutil
    return [p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def one_round(cluster, k, args, tmp):
    import psutil
    from procs import Procs

    from scitq.client import Client
    db_url = cluster.create_database(f"hot{k}")
    (tmp / f"hot{k}").mkdir()
    procs = Procs(tmp / f"hot{k}")
    try:
        server = procs.server(db_url, "--auth", "--log-level", "WARNING")
        token = (procs.tmp / "data" / "admin.token").read_text().strip()
        with Client(server.url, token=token, timeout=120) as c:
            pairs = [(f"w{i:03d}", c.create_token(f"w{i:03d}", "worker")["token"]) for i in range(args.workers)]
            c.add_tasks([{"command": "true"} for _ in range(args.workers * (args.requests + 4) + 10)], batch="hot")
        gate = threading.Barrier(args.workers + 1)
        workers = [BusyWorker(server.url, name, tok, args.requests, gate) for name, tok in pairs]
        for w in workers:
            w.start()
        gate.wait(timeout=120)
        me, pg = psutil.Process(server.pid), postgres_processes()
        cpu0, pg0, t0 = cpu_of([me]), cpu_of(pg), time.monotonic()
        for w in workers:
            w.join()
        cpu1, pg1, t1 = cpu_of([me]), cpu_of(pg), time.monotonic()
        errors = [e for w in workers for e in w.errors]
        n = sum(len(w.times) for w in workers)
        times = [x for w in workers for x in w.times]
        return {"n": n, "server_ms": 1000 * (cpu1 - cpu0) / max(n, 1), "pg_ms": 1000 * (pg1 - pg0) / max(n, 1),
                "rate": n / (t1 - t0), "p50": pct(times, 50), "p99": pct(times, 99), "errors": errors}
    finally:
        procs.cleanup()
        cluster.drop_database(f"hot{k}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--requests", type=int, default=400, help="per worker")
    ap.add_argument("--rounds", type=int, default=3, help="each on a fresh server and database")
    args = ap.parse_args()
    if min(args.workers, args.requests, args.rounds) < 1:
        ap.error("--workers, --requests and --rounds must be at least 1")
    import pgcluster
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        cluster = pgcluster.start(tmp / "pg")
        try:
            print(f"hot path: {args.workers} busy workers x {args.requests} requests (end + start + more), "
                  f"server `scitq server --auth` on PostgreSQL, {os.cpu_count()} cores for everything")
            print(f"{'round':>6}{'requests':>10}{'server ms/req':>15}{'PG ms/req':>11}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}")
            for k in range(args.rounds):
                r = one_round(cluster, k, args, tmp)
                print(f"{k + 1:>6}{r['n']:>10}{r['server_ms']:>15.2f}{r['pg_ms']:>11.2f}{r['rate']:>8.0f}"
                      f"{r['p50']:>8.1f}{r['p99']:>8.1f}" + (f"  errors: {r['errors'][:2]}" if r["errors"] else ""),
                      flush=True)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
