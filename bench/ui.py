"""The UI's live views at scale: the dashboard JSON and the first task-list page with
1,000,000 tasks on PostgreSQL, p50/p95 of 20 calls each (goal: under 1 s).

    python bench/ui.py [--tasks 1000000] [--batches 20] [--calls 20]

A throwaway cluster (tests/pgcluster.py) gets the schema from the app, then tasks spread
over the batches with mixed statuses, one execution per task that ran (ended ones spread
over the last hours, the latest within the throughput window), inserted by
INSERT ... SELECT generate_series. The calls go through Flask's test client, so what is
timed is the server's work (queries and JSON), not a network. Timed twice: right after the
load with fresh statistics (ANALYZE), and after a VACUUM (as autovacuum leaves the tables
in a while, which lets PostgreSQL answer GROUP BYs from the indexes alone).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # noqa: E402

GOAL = 1.0    # seconds

# Per batch k of n (1-based): the share of its tasks finished falls from 100% (batch 1) to 0
# (batch n); of the finished ones 3% failed and 1% canceled; of the others the first 20 run,
# a few wait for dependencies, the rest are pending. Ids of a batch are contiguous, as
# submissions make them.
TASKS_SQL = """
INSERT INTO task (batch_id, name, command, shell, status, reason, attempt, retries, retry_delay,
                  retry_backoff, use_cache, created_at, updated_at)
SELECT b.id, 'sample-' || g, 'bwa mem ref.fa sample' || g || '.fq > out.sam', true,
       CASE WHEN i < done THEN (CASE WHEN i %% 100 < 3 THEN 'failed'
                                     WHEN i %% 100 = 3 THEN 'canceled' ELSE 'succeeded' END)
            WHEN i < done + 20 THEN 'running'
            WHEN i %% 50 = 0 THEN 'waiting'
            ELSE 'pending' END,
       CASE WHEN i < done AND i %% 100 < 3 THEN 'exit 1' END,
       CASE WHEN i < done + 20 THEN 1 ELSE 0 END, 0, 0, 1, false,
       now() - interval '1 day', now()
FROM (SELECT g, (g - 1) / %(per)s + 1 AS k, (g - 1) %% %(per)s AS i,
             %(per)s * (%(n)s - ((g - 1) / %(per)s + 1)) / greatest(%(n)s - 1, 1) AS done
      FROM generate_series(1, %(tasks)s) AS g) AS s
JOIN batch b ON b.name = 'bench-' || s.k
ORDER BY g
"""
# One execution per task that ran: ended ones 20 ms apart (50 tasks a second), the one of the
# highest id ending now, so that the throughput window holds the newest ~15,000.
EXECUTIONS_SQL = """
INSERT INTO execution (task_id, worker_name, status, return_code, signal_seq, paused,
                       stdout_bytes, stderr_bytes, assigned_at, started_at, ended_at)
SELECT t.id, 'worker-' || (t.id % 50), t.status,
       CASE t.status WHEN 'succeeded' THEN 0 WHEN 'failed' THEN 1 END, 0, false, 1000, 10,
       e.ended - interval '30 seconds', e.ended - interval '30 seconds',
       CASE WHEN t.status <> 'running' THEN e.ended END
FROM (SELECT id, status, row_number() OVER (ORDER BY id DESC) AS back FROM task
      WHERE status IN ('succeeded', 'failed', 'running')) AS t
CROSS JOIN LATERAL (SELECT now() - t.back * interval '20 milliseconds' AS ended) AS e
ORDER BY t.id
"""


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def load(url, tasks, batches):
    import psycopg
    per = -(-tasks // batches)
    t0 = time.monotonic()
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("INSERT INTO batch (name, status, created_at) "
                     "SELECT 'bench-' || k, 'active', now() FROM generate_series(1, %s) AS k",
                     (batches,))
        conn.execute(TASKS_SQL, {"per": per, "n": batches, "tasks": tasks})
        conn.execute(EXECUTIONS_SQL)
        conn.execute("INSERT INTO worker (name, status, concurrency, prefetch, last_seen, created_at) "
                     "SELECT 'worker-' || k, 'running', 8, 0, now(), now() FROM generate_series(0, 49) k")
        conn.execute("ANALYZE")
        n_tasks = conn.execute("SELECT count(*) FROM task").fetchone()[0]
        n_ex = conn.execute("SELECT count(*) FROM execution").fetchone()[0]
    print(f"loaded {n_tasks} tasks in {batches} batches and {n_ex} executions "
          f"in {time.monotonic() - t0:.1f} s", flush=True)


def vacuum(url):
    import psycopg
    t0 = time.monotonic()
    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    print(f"VACUUM ANALYZE in {time.monotonic() - t0:.1f} s", flush=True)


def time_calls(client, path, calls):
    client.get(path)            # one warm-up call: connection pool, plans, imports
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        r = client.get(path)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, (path, r.status_code, r.get_data()[:300])
    return out


def time_parts(db, calls):
    """The dashboard's queries one by one: where its time goes."""
    from scitq.server.recruit.ledger import cost_of
    from scitq.server import task_store
    from scitq.server.models import utcnow
    from scitq.server.ui import dashboard as dash
    parts = [("  batch counts (GROUP BY)", lambda s: task_store.batch_counts(s)),
             ("  throughput (executions)", lambda s: dash.throughputs(s, utcnow())),
             ("  cost of batches", lambda s: cost_of(s, batch_ids=list(range(1, 21))))]
    out = []
    for name, fn in parts:
        values = []
        for _ in range(calls + 1):
            with db.read() as s:
                t0 = time.perf_counter()
                fn(s)
                values.append(time.perf_counter() - t0)
        out.append((name, values[1:]))
    return out


def views(batches):
    mid = f"bench-{batches // 2}"
    return [
        ("dashboard JSON", "/ui/api/dashboard"),
        ("task list, first page", "/api/v1/tasks?limit=50"),
        (f"  of batch {mid}", f"/api/v1/tasks?batch={mid}&limit=50"),
        (f"  pending of bench-{batches}", f"/api/v1/tasks?batch=bench-{batches}&status=pending&limit=50"),
        ("  failed, any batch", "/api/v1/tasks?status=failed&limit=50"),
        ("  from a cursor mid-table", None),     # filled in: after= the id of a middle task
        ("batch totals (task page)", "/api/v1/batches"),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()

    from scitq.server import create_app
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        cluster = pgcluster.start(tmp / "pg")
        try:
            url = cluster.create_database("uibench")
            app = create_app({"DATA_DIR": tmp / "data", "DATABASE": url, "PROVIDERS": {}})
            load(url, args.tasks, args.batches)
            client = app.test_client()
            deep = client.get("/api/v1/tasks?limit=1&after=%d" % (args.tasks // 2)).get_json()["items"]
            for phase in ("after ANALYZE", "after VACUUM"):
                if phase == "after VACUUM":
                    vacuum(url)
                for name, path in views(args.batches):
                    path = path or f"/api/v1/tasks?limit=50&after={deep[0]['id'] if deep else 0}"
                    rows.append((phase, name, time_calls(client, path, args.calls)))
                rows += [(phase, name, v) for name, v in time_parts(app.extensions["scitq"].db,
                                                                    args.calls)]
            d = client.get("/ui/api/dashboard").get_json()
            busy = [b for b in d["batches"] if b["throughput"]]
            print(f"dashboard: {len(d['batches'])} batches, {len(busy)} with a throughput, e.g. "
                  + ", ".join(f"{b['name']} {b['throughput']}/min eta {b['eta']}s" for b in busy[-2:]))
            app.extensions["scitq"].db.dispose()
        finally:
            cluster.stop()

    print(f"\n{args.tasks} tasks, {args.batches} batches, PostgreSQL, Flask test client, "
          f"{args.calls} calls each, ms ({os.cpu_count()} cores, Python {sys.version.split()[0]})")
    print(f"{'phase':<15}{'view':<32}{'p50':>9}{'p95':>9}{'max':>9}")
    worst = 0.0
    for phase, name, values in rows:
        print(f"{phase:<15}{name:<32}" + "".join(f"{v * 1000:>9.1f}" for v in
                                                  (pct(values, 50), pct(values, 95), max(values))))
        if name in ("dashboard JSON", "task list, first page"):
            worst = max(worst, pct(values, 95))
    print(f"goal p95 < {GOAL:.0f} s for the dashboard and the first page: "
          f"{'met' if worst < GOAL else 'MISSED'} (worst p95 {worst * 1000:.0f} ms)")
    sys.exit(0 if worst < GOAL else 1)


if __name__ == "__main__":
    main()
