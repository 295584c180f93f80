"""A million tasks: bulk submission, then the queries people make on a big batch.

    python bench/scale.py [--tasks 1000000] [--repeat 50]

A server on a throwaway PostgreSQL (tests/pgcluster.py), no worker. The tasks go in
through the bulk API (POST /api/v1/tasks/bulk, chunks of 10,000 by
scitq.client.Client.add_tasks); the time and tasks/s are printed. Then the batch is made
to look 60% done (SQL: 59% succeeded, 1% failed, the rest pending; and a VACUUM ANALYZE,
as autovacuum would do), a second batch of 10,000 tasks stands beside it, and each query
is timed `--repeat` times through HTTP: the batch summary (GET /api/v1/batches/<ref>,
counts by status) and task pages (GET /api/v1/tasks with batch and status filters, the
first page and a deep cursor page). Goal: p95 < 100 ms. The server's RSS (psutil) is
printed after the inserts and after the queries.

The finished part has its executions (SQL again), spread over WORKERS workers and the last
SPREAD_MINUTES minutes, as a batch running at that pace leaves them; RUNNING tasks run now on
them, and one more worker registered late has run only a few. One rollup pass (the server's,
in this process) makes the charts' rows. Then the batch list, the dashboard's JSON, the UI's
pages, the charts, a worker's tasks (its executions and the workers page's activity) and
/metrics are timed too; /metrics after its cache has expired (one call per CACHE_SECONDS).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # noqa: E402
from procs import Procs  # noqa: E402

from scitq.client import Client  # noqa: E402
from scitq.server import metrics  # noqa: E402

WORKERS = 4             # the workers that ran the finished part
SPREAD_MINUTES = 60     # its executions ended over this many minutes, up to now
RUNNING = 16            # tasks running now, spread over the workers
METRICS_REPEAT = 12     # /metrics calls, each after the cache expired


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def timed(fn, repeat, pause=0.0):
    """`repeat` durations of fn() in ms, each after `pause` seconds (not counted)."""
    fn()        # the first call warms the caches; it is not counted
    out = []
    for _ in range(repeat):
        time.sleep(pause)
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def look_done(db_url, batch, n):
    """59% succeeded, 1% failed (spread), the rest pending: a batch well under way."""
    import psycopg
    with psycopg.connect(db_url.replace("+psycopg", "", 1), autocommit=True) as conn:
        first = conn.execute("SELECT min(t.id) FROM task t JOIN batch b ON b.id = t.batch_id "
                             "WHERE b.name = %s", (batch,)).fetchone()[0]
        done = first + int(n * 0.6)
        conn.execute("UPDATE task SET status = CASE WHEN id %% 60 = 0 THEN 'failed' ELSE 'succeeded' END, "
                     "attempt = 1 WHERE id >= %s AND id < %s", (first, done))
        conn.execute("VACUUM ANALYZE task")
        return first, done


def fill_executions(db_url, first, done):
    """WORKERS workers and a late one; one execution per finished task (its status, ended
    over the last SPREAD_MINUTES minutes, worker by worker in turn); RUNNING tasks running
    now, and three ended on the late worker. Then an ANALYZE, as autovacuum would do. The
    workers' ids, the late one last."""
    import psycopg
    with psycopg.connect(db_url.replace("+psycopg", "", 1), autocommit=True) as conn:
        # Paused, so that the dispatcher gives them none of the pending tasks, and seen
        # "tomorrow", so that the lease sweep leaves their running tasks alone: they never poll.
        worker_ids = [conn.execute(
            "INSERT INTO worker (name, status, concurrency, depth, last_seen, created_at) "
            "VALUES (%s, 'paused', 4, 0, now() + interval '1 day', now()) RETURNING id",
            (f"bench-w{i}",)).fetchone()[0] for i in range(WORKERS + 1)]
        late = worker_ids.pop()
        ids = "{" + ",".join(map(str, worker_ids)) + "}"
        conn.execute(
            "INSERT INTO execution (task_id, worker_id, worker_name, status, return_code, signal_seq, "
            "paused, stdout_bytes, stderr_bytes, assigned_at, started_at, ended_at) "
            "SELECT t.id, w.id, w.name, t.status, CASE WHEN t.status = 'failed' THEN 1 ELSE 0 END, "
            "0, false, 0, 0, t.e - interval '2 s', t.e - interval '1 s', t.e "
            "FROM (SELECT id, status, now() - make_interval(secs => %(span)s * (%(done)s - id) "
            "/ (%(done)s - %(first)s)) AS e, (%(ids)s::bigint[])[1 + id %% %(n)s] AS wid "
            "FROM task WHERE id >= %(first)s AND id < %(done)s) t JOIN worker w ON w.id = t.wid",
            {"span": SPREAD_MINUTES * 60.0, "done": done, "first": first, "ids": ids,
             "n": len(worker_ids)})
        conn.execute("UPDATE task SET status = 'running', attempt = 1 WHERE id >= %s AND id < %s",
                     (done, done + RUNNING))
        conn.execute(
            "INSERT INTO execution (task_id, worker_id, worker_name, status, signal_seq, paused, "
            "stdout_bytes, stderr_bytes, assigned_at, started_at) "
            "SELECT t.id, w.id, w.name, 'running', 0, false, 0, 0, now(), now() "
            "FROM task t JOIN worker w ON w.id = (%s::bigint[])[1 + t.id %% %s] "
            "WHERE t.id >= %s AND t.id < %s", (ids, len(worker_ids), done, done + RUNNING))
        conn.execute("UPDATE execution SET worker_id = %s WHERE id IN "
                     "(SELECT id FROM execution WHERE status = 'succeeded' ORDER BY id DESC LIMIT 3)",
                     (late,))
        conn.execute("VACUUM ANALYZE task")
        conn.execute("VACUUM ANALYZE execution")
    return worker_ids + [late]


def roll_up(db_url):
    """The rollup pass the server makes every few seconds, from the first execution on (its
    own passes, made before the executions were written, are dropped). Its seconds."""
    from sqlalchemy import delete

    from scitq.server.db import Database
    from scitq.server.models import MinuteRollup
    from scitq.server.rollups import Rollups
    db = Database(db_url)
    try:
        with db.write() as s:
            s.execute(delete(MinuteRollup))
        t0 = time.perf_counter()
        Rollups(db).roll()
        return time.perf_counter() - t0
    finally:
        db.dispose()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    n = args.tasks
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        cluster = pgcluster.start(tmp / "pg")
        procs = Procs(tmp)
        try:
            db_url = cluster.create_database("scale")
            server = procs.server(db_url, "--log-level", "WARNING")
            rss = psutil.Process(server.pid).memory_info
            with Client(server.url, timeout=300) as c:
                tasks = [{"command": f"process sample{i}.fq", "name": f"s{i}"} for i in range(n)]
                t0 = time.perf_counter()
                ids = c.add_tasks(tasks, batch="big")
                insert_s = time.perf_counter() - t0
                del tasks
                c.add_tasks([{"command": "true"}] * 10_000, batch="other")
                rss_inserted = rss().rss
                first, done = look_done(db_url, "big", n)
                t0 = time.perf_counter()
                workers = fill_executions(db_url, first, done)
                busy, late = workers[0], workers[-1]
                fill_s = time.perf_counter() - t0
                roll_s = roll_up(db_url)
                deep = ids[int(n * 0.9)]            # a cursor 90% of the way through
                deep_done = ids[int(n * 0.5)]       # half-way through the finished part

                def ui(path):
                    r = c.http.get(server.url + path)
                    r.raise_for_status()
                    return r
                queries = [
                    ("batch list", lambda: c.batches()),
                    ("batch summary (counts by status)", lambda: c.batch("big")),
                    ("tasks of the batch, first page", lambda: c.tasks(batch="big")),
                    ("tasks of the batch, deep page", lambda: c.tasks(batch="big", after=deep)),
                    ("failed tasks, first page", lambda: c.tasks(batch="big", status="failed")),
                    ("failed tasks, deep page", lambda: c.tasks(batch="big", status="failed",
                                                                after=deep_done)),
                    ("pending tasks, first page", lambda: c.tasks(batch="big", status="pending")),
                    ("succeeded tasks, deep page", lambda: c.tasks(batch="big", status="succeeded",
                                                                   after=deep_done)),
                    ("pending of another batch, first page", lambda: c.tasks(batch="other",
                                                                             status="pending")),
                    # The UI's compact JSON and /metrics (issue 20): the charts read the
                    # per-minute rollups; a page of tasks asks for its latest attempts.
                    ("dashboard JSON", lambda: ui("/ui/api/dashboard")),
                    ("chart of the batch (last hour)", lambda: ui("/ui/api/charts?batch=big")),
                    ("chart of every batch (24 h)", lambda: ui("/ui/api/charts?minutes=1440")),
                    ("latest attempts of a page of tasks", lambda: ui(
                        "/ui/api/task-runs?ids=" + ",".join(map(str, ids[n // 2:n // 2 + 50])))),
                    ("page /ui/ (dashboard)", lambda: ui("/ui/")),
                    ("page /ui/tasks?batch=big", lambda: ui("/ui/tasks?batch=big")),
                    ("page /ui/workers", lambda: ui("/ui/workers")),
                    ("workers list", lambda: c.workers()),
                    ("a worker's tasks, first page", lambda: c.executions(worker_id=busy)),
                    ("a worker's tasks, deep page", lambda: c.executions(
                        worker_id=busy, after=int(n * 0.3))),     # half-way through its ids
                    ("a late worker's tasks", lambda: c.executions(worker_id=late)),
                    ("worker activity (workers page)", lambda: ui(
                        "/ui/api/worker-activity?ids=" + ",".join(map(str, workers)))),
                ]
                assert c.batch("big")["counts"]["total"] == n
                assert len(c.tasks(batch="big", status="failed", after=deep_done)["items"]) == 100
                assert len(c.executions(worker_id=busy)["items"]) == 100
                assert len(c.executions(worker_id=late)["items"]) == 3
                results = [(name, timed(fn, args.repeat)) for name, fn in queries]
                # each call once the server's cache of the database's figures has expired
                results.append(("metrics, cache expired", timed(
                    lambda: ui("/metrics"), min(args.repeat, METRICS_REPEAT),
                    pause=metrics.CACHE_SECONDS + 0.1)))
                rss_after = rss().rss
        finally:
            procs.cleanup()
            cluster.stop()
    print(f"\n{n:,} tasks in one batch, PostgreSQL ({os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]})")
    print(f"bulk insert: {insert_s:.1f} s, {n / insert_s:,.0f} tasks/s (chunks of 10,000)")
    print(f"executions of the finished part: {fill_s:.1f} s (SQL); one rollup pass over them: "
          f"{roll_s:.2f} s")
    print(f"server RSS: {rss_inserted / 1e6:.0f} MB after the inserts, "
          f"{rss_after / 1e6:.0f} MB after the queries")
    print(f"{'query (through HTTP, ms)':<40}{'p50':>8}{'p95':>8}{'max':>8}")
    worst = 0
    for name, ms in results:
        worst = max(worst, pct(ms, 95))
        print(f"{name:<40}{pct(ms, 50):>8.1f}{pct(ms, 95):>8.1f}{max(ms):>8.1f}")
    print(f"goal p95 < 100 ms: {'met' if worst < 100 else 'MISSED'} (worst p95 {worst:.1f} ms)")


if __name__ == "__main__":
    main()
