"""What the cancel cascade and its revival cost on a wide DAG: a task with 100,000 dependents
fails for good, then is relaunched.

    python bench/cascade.py [DEPENDENTS]     (a positive integer, 100,000 by default)

SQLite and a throwaway PostgreSQL (tests/pgcluster.py), in this process. The tasks and their
edges go in by bulk insert; the root then fails for good through lifecycle.Moves (what an
execution's final report goes through), timed with its commit, and is relaunched through
lifecycle.relaunch (what POST /tasks/<id>/relaunch calls), timed the same way. Each checks
that every dependent changed and has its one event.
"""
import os
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # noqa: E402

from scitq.server import lifecycle, task_store  # noqa: E402
from scitq.server.db import Database, insert_rows, insert_with_ids  # noqa: E402
from scitq.server.models import Event, Task, TaskDependency, utcnow  # noqa: E402

if len(sys.argv) > 2 or (len(sys.argv) == 2 and not sys.argv[1].isdigit()):
    print("usage: python bench/cascade.py [DEPENDENTS]  (a positive integer)", file=sys.stderr)
    sys.exit(2)
DEPENDENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000


def build(db):
    """The root (assigned: its attempt is under way) and its DEPENDENTS waiting tasks."""
    with db.write() as s:
        batch = task_store.get_or_create_batch(s, "wide")
        s.flush()
        now = utcnow()
        conn = s.connection()

        def row(i, status):
            return {"batch_id": batch.id, "command": f"task {i}", "status": status, "attempt": 1,
                    "created_at": now, "updated_at": now}
        (root,) = insert_with_ids(conn, Task.__table__, [row(0, "assigned")])
        ids = insert_with_ids(conn, Task.__table__, [row(i, "waiting") for i in range(1, DEPENDENTS + 1)])
        insert_rows(conn, TaskDependency.__table__, [{"task_id": i, "depends_on_id": root} for i in ids])
    return root


def count(db, kind, status):
    with db.read() as s:
        events = s.scalar(select(func.count()).select_from(Event).where(Event.kind == kind))
        tasks = s.scalar(select(func.count()).select_from(Task).where(Task.status == status))
    return events, tasks


def run(db):
    """(seconds to cancel, seconds to revive) the dependents."""
    db.migrate()
    root = build(db)
    t0 = time.perf_counter()
    with db.write() as s:
        moves = lifecycle.Moves()
        moves.fail({"id": root, "attempt": 1, "retries": 0}, "bench", retry=False)
        moves.write(s)
    cancel = time.perf_counter() - t0
    assert count(db, "task.canceled", "canceled") == (DEPENDENTS, DEPENDENTS)
    t0 = time.perf_counter()
    with db.write() as s:
        lifecycle.relaunch(s, [root])
    revive = time.perf_counter() - t0
    assert count(db, "task.waiting", "waiting") == (DEPENDENTS, DEPENDENTS)
    db.dispose()
    return cancel, revive


def main():
    with pgcluster.throwaway() as (tmp, cluster):
        print(f"cancel cascade and revival of {DEPENDENTS:,} dependents "
              f"({os.cpu_count()} cores, Python {sys.version.split()[0]}), seconds with the commit")
        print(f"{'database':<12}{'cancel':>10}{'revive':>10}")
        for name, url in (("sqlite", f"sqlite:///{tmp}/a.db"), ("postgresql", cluster.create_database("a"))):
            cancel, revive = run(Database(url))
            print(f"{name:<12}{cancel:>10.2f}{revive:>10.2f}")


if __name__ == "__main__":
    main()
