"""Fleet: N workers speaking the real protocol against one real `scitq server` on PostgreSQL.

    python bench/fleet.py [--workers 50 200 1000] [--concurrency 4] [--min 10 --max 30]
                          [--window 60] [--warmup 45] [--sim-processes auto]

The server is `scitq server --auth` with its defaults otherwise (a fleet is never served
without auth), on a throwaway PostgreSQL. The workers are scitq's own `Worker` objects, each
with a worker token of its own, run many to a process by tests/fleetsim.py: they register,
long-poll, report, size their prefetch and take the next tasks from the answers to their
reports exactly as a deployed worker does. Only the task itself is simulated: an execution
sleeps for the `sleep N` of its command instead of forking it (4,000 real processes would
measure the fork, not the server).

Each task is `sleep D`, D drawn uniformly in [min, max] s (fixed seed); the ideal rate is
workers x concurrency / mean(D). After `--warmup` s (every slot busy, the first tasks
ended) the bench counts the tasks that end during `--window` s, while a probe, every 0.5 s
in this process, reads the batch list, reads a page of pending tasks, and submits a task.

Printed per N: done rate against ideal, probe p50/p99 per call, errors (calls a worker had
to retry for another reason than a 503, probe failures), the server's 503 refusals, workers
lost, tasks seen with two live executions, and the server's peak RSS, threads and
descriptors. A fleet that is not up whole after 120 s + N/10 s is measured anyway, and
says how many had registered. Every call goes to 127.0.0.1.
"""
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] if values else float("nan")


# -- the bench ------------------------------------------------------------------------------

class Probe(threading.Thread):
    """What a user does meanwhile: the batch list, a page of pending tasks, a submission."""

    def __init__(self, url, token, batch):
        super().__init__(daemon=True)
        import httpx
        self.http = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"},
                                 timeout=30)
        self.batch = batch
        self.times = {"batch list": [], "pending page": [], "submit": []}
        self.errors = []
        self.stop = threading.Event()

    def call(self, kind, method, path, **kw):
        t0 = time.perf_counter()
        try:
            r = self.http.request(method, path, **kw)
            if r.status_code >= 400:
                self.errors.append(f"{kind}: HTTP {r.status_code} {r.text[:120]}")
        except Exception as exc:        # a timeout is a figure too: counted, then the next look
            self.errors.append(f"{kind}: {exc!r}")
        self.times[kind].append((time.perf_counter() - t0) * 1000)

    def run(self):
        while not self.stop.wait(0.5):
            self.call("batch list", "GET", "/batches")
            self.call("pending page", "GET", "/tasks", params={"batch": self.batch,
                                                               "status": "pending", "limit": 50})
            self.call("submit", "POST", "/tasks", json={"command": "sleep 0", "batch": "probe"})


class Sampler(threading.Thread):
    """The server process's peak RSS, threads and open descriptors, and its CPU time."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        import psutil
        self.proc = psutil.Process(pid)
        self.rss = self.threads = self.fds = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            try:
                self.rss = max(self.rss, self.proc.memory_info().rss)
                self.threads = max(self.threads, self.proc.num_threads())
                self.fds = max(self.fds, self.proc.num_fds())
            except Exception:
                return

    def cpu(self):
        t = self.proc.cpu_times()
        return t.user + t.system


def request_counts(client):
    """{endpoint: requests served so far} and the dispatch passes, from the server's /metrics
    (read with prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families
    counts = {}
    for family in text_string_to_metric_families(client.http.get(client.server + "/metrics").text):
        for sample in family.samples:
            if sample.name == "scitq_http_request_seconds_count":
                key = sample.labels.get("endpoint") or "?"
                counts[key] = counts.get(key, 0) + sample.value
            elif sample.name == "scitq_dispatch_seconds_count":
                counts["dispatch passes"] = sample.value
    return counts


def live_duplicates(db_url):
    """Tasks with two executions assigned or running at once (must be none)."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(db_url)
    try:
        with engine.connect() as c:
            return c.execute(sqlalchemy.text(
                "SELECT count(*) FROM (SELECT task_id FROM execution WHERE status IN "
                "('assigned', 'running') GROUP BY task_id HAVING count(*) > 1) d")).scalar()
    finally:
        engine.dispose()


def run_fleet(cluster, n, args, tmp):
    from procs import Procs, wait_until

    from scitq.client import Client
    db_url = cluster.create_database(f"fleet{n}")
    (tmp / f"fleet{n}").mkdir()
    procs = Procs(tmp / f"fleet{n}")
    sims = []
    try:
        server = procs.server(db_url, "--auth", "--log-level", "WARNING")
        token = (procs.tmp / "data" / "admin.token").read_text().strip()
        with Client(server.url, token=token, timeout=120) as c:
            per = -(-n // args.sim_processes)
            for k in range(args.sim_processes):
                names = [f"w{i:05d}" for i in range(k * per, min(n, (k + 1) * per))]
                if not names:
                    continue
                pairs = [(name, c.create_token(name, "worker")["token"]) for name in names]
                tf = procs.tmp / f"tokens{k}.json"
                tf.write_text(json.dumps(pairs))
                log = open(procs.tmp / f"sim{k}.log", "w")
                sims.append((subprocess.Popen(
                    [sys.executable, str(HERE.parent / "tests" / "fleetsim.py"), server.url, str(tf),
                     str(args.concurrency), str(procs.tmp / "work")], stdout=subprocess.PIPE, stderr=log,
                    text=True), log))
            rng = random.Random(n)
            ideal = n * args.concurrency / ((args.min + args.max) / 2)
            total = int(ideal * (args.warmup + args.window) * 1.3) + n * args.concurrency * 2
            c.add_tasks([{"command": f"sleep {rng.uniform(args.min, args.max):.2f}"} for _ in range(total)],
                        batch="fleet")
            # A fleet beyond what the machine serves may never be up whole: it is measured
            # anyway once the time is up (the probe and the refusals are the figures then).
            try:
                wait_until(lambda: len(c.workers()) >= n, 120 + n / 10, interval=2, what=f"{n} workers")
            except AssertionError:
                pass
            registered = len(c.workers())
            sampler = Sampler(server.pid)
            sampler.start()
            time.sleep(args.warmup)
            probe = Probe(server.url, token, "fleet")
            done0, t0, cpu0 = c.batch("fleet")["counts"]["succeeded"], time.monotonic(), sampler.cpu()
            calls0 = request_counts(c)
            probe.start()
            dups = 0
            for _ in range(max(1, int(args.window // 10))):
                time.sleep(args.window / max(1, int(args.window // 10)))
                dups = max(dups, live_duplicates(db_url))
            done1, t1, cpu1 = c.batch("fleet")["counts"]["succeeded"], time.monotonic(), sampler.cpu()
            calls1 = request_counts(c)
            probe.stop.set()
            probe.join()
            sampler.stop.set()
            statuses = [w["status"] for w in c.workers()]
            lost = sum(s == "lost" for s in statuses)
            failed = c.batch("fleet")["counts"]["failed"]
        retries = refused = 0
        for proc, log in sims:
            proc.send_signal(signal.SIGTERM)
        for proc, log in sims:
            try:
                out, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:       # still draining: its counts came first
                proc.kill()
                out, _ = proc.communicate()
            counts = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            retries += counts[-1]["retries"] if counts else float("nan")
            refused += counts[-1]["refused"] if counts else float("nan")
        rate = (done1 - done0) / (t1 - t0)
        return {"workers": n, "registered": registered, "rate": rate, "ideal": ideal, "probe": probe.times,
                "probe_errors": probe.errors, "retries": retries, "refused": refused, "lost": lost, "dups": dups,
                "failed": failed, "rss": sampler.rss, "threads": sampler.threads, "fds": sampler.fds,
                "server_cpu": (cpu1 - cpu0) / (t1 - t0),
                "per_task": {k: (v - calls0.get(k, 0)) / max(done1 - done0, 1) for k, v in calls1.items()
                             if v - calls0.get(k, 0) > 0}}
    finally:
        for proc, log in sims:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        procs.cleanup()
        cluster.drop_database(f"fleet{n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[50, 200, 1000])
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--min", type=float, default=10.0, help="shortest task, seconds")
    ap.add_argument("--max", type=float, default=30.0, help="longest task, seconds")
    ap.add_argument("--warmup", type=float, default=45.0)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--sim-processes", type=int, default=0, help="processes the workers are "
                    "spread over (default: one per 1,000 workers)")
    args = ap.parse_args()
    if not 0 < args.min <= args.max or args.concurrency < 1 or min(args.workers) < 1:
        ap.error("--min must be positive and at most --max; --concurrency and --workers at least 1")
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))    # the sims' connections
    import pgcluster
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        cluster = pgcluster.start(tmp / "pg")
        try:
            for n in args.workers:
                a = argparse.Namespace(**vars(args))
                a.sim_processes = args.sim_processes or max(1, -(-n // 1000))
                rows.append(run_fleet(cluster, n, a, tmp))
                report(rows[-1], a)
        finally:
            cluster.stop()
    print(f"\nfleet: tasks of {args.min:g}-{args.max:g} s, concurrency {args.concurrency} per worker, "
          f"server `scitq server --auth` on PostgreSQL, {os.cpu_count()} cores for everything "
          f"(server, PostgreSQL, simulated workers, probe)")
    print(f"{'workers':>8}{'done/s':>9}{'ideal':>8}{'%':>6}{'list p50/p99':>16}{'page p50/p99':>16}"
          f"{'submit p50/p99':>17}{'errors':>8}{'503':>7}{'lost':>6}{'dup':>5}{'RSS MB':>8}{'thr':>5}{'fds':>6}{'CPU':>6}")
    for r in rows:
        t = r["probe"]
        cells = "".join(f"{pct(t[k], 50):>8.0f}/{pct(t[k], 99):<7.0f}" for k in ("batch list", "pending page", "submit"))
        print(f"{r['workers']:>8}{r['rate']:>9.1f}{r['ideal']:>8.1f}{100 * r['rate'] / r['ideal']:>6.0f} {cells}"
              f"{r['retries'] - r['refused'] + len(r['probe_errors']):>8}{r['refused']:>7}{r['lost']:>6}{r['dups']:>5}"
              f"{r['rss'] / 2**20:>8.0f}{r['threads']:>5}{r['fds']:>6}{100 * r['server_cpu']:>5.0f}%")


def report(r, args):
    t = r["probe"]
    probe = ", ".join(f"{k} p50 {pct(t[k], 50):.0f} p99 {pct(t[k], 99):.0f} ms" for k in t)
    whole = "" if r["registered"] >= r["workers"] else f" (only {r['registered']} registered when the window began)"
    print(f"{r['workers']} workers{whole}: {r['rate']:.1f} tasks/s done (ideal {r['ideal']:.1f}), {probe}, "
          f"{r['retries']} worker retries ({r['refused']} of them 503 refusals), {len(r['probe_errors'])} probe errors "
          f"{r['probe_errors'][:3]}, {r['lost']} lost, {r['dups']} dup, {r['failed']} failed, "
          f"server CPU {100 * r['server_cpu']:.0f}% ({1000 * r['server_cpu'] / max(r['rate'], 1e-9):.2f} ms a task)",
          flush=True)
    calls = sorted(r["per_task"].items(), key=lambda kv: -kv[1])
    print("  served per task done (from /metrics): " + ", ".join(f"{k} {v:.2f}" for k, v in calls[:8]), flush=True)


if __name__ == "__main__":
    main()
