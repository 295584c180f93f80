"""What the task_count triggers cost: bulk submissions and report-like status changes, on
databases with and without them.

    python bench/counts.py

SQLite and a throwaway PostgreSQL (tests/pgcluster.py), in this process. Two databases of
each kind at the newest schema, the triggers dropped from the second; taken in turn, three
rounds each: a submission of 10,000 tasks through scitq.server.queue.create_tasks (three
per round), then 100 groups of 64 tasks taken through assigned, running and succeeded, one
transaction per status change (what a reports request writes to task). Medians, in ms.
"""
import os
import statistics
import sys
import time
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgcluster  # noqa: E402

from scitq.server import task_store  # noqa: E402
from scitq.server.db import Database  # noqa: E402
from scitq.server.models import Task  # noqa: E402

ROUNDS = 3
SUBMISSION = 10_000
GROUP = 64


def one_round(db, label):
    """(ms per submission, ms per status change of GROUP tasks), each a median."""
    submissions, changes = [], []
    for r in range(3):
        with db.write() as s:
            t0 = time.perf_counter()
            ids = task_store.create_tasks(s, [{"command": f"x {i}"} for i in range(SUBMISSION)],
                                     f"{label}-{r}")
        submissions.append(time.perf_counter() - t0)
    for j in range(0, 100 * GROUP, GROUP):
        group = ids[j:j + GROUP]
        for status in ("assigned", "running", "succeeded"):
            t0 = time.perf_counter()
            with db.write() as s:
                s.execute(Task.__table__.update().where(Task.id.in_(group)).values(status=status))
            changes.append(time.perf_counter() - t0)
    return statistics.median(submissions) * 1000, statistics.median(changes) * 1000


def drop_triggers(db):
    with db.write() as s:
        for kind in ("insert", "update", "delete"):
            s.execute(text(f"DROP TRIGGER task_count_{kind}" + ("" if db.is_sqlite else " ON task")))


def main():
    with pgcluster.throwaway() as (tmp, cluster):
        print(f"task_count triggers ({os.cpu_count()} cores, Python {sys.version.split()[0]}), "
              "medians in ms")
        print(f"{'database':<12}{'triggers':<10}{'submit 10,000':>15}{'64 tasks change':>17}")
        for name, urls in (("sqlite", [f"sqlite:///{tmp}/a.db", f"sqlite:///{tmp}/b.db"]),
                           ("postgresql", [cluster.create_database("a"),
                                           cluster.create_database("b")])):
            dbs = {"with": Database(urls[0]), "without": Database(urls[1])}
            for db in dbs.values():
                db.migrate()
            drop_triggers(dbs["without"])
            runs = {key: [] for key in dbs}
            for k in range(ROUNDS):
                for key, db in dbs.items():
                    runs[key].append(one_round(db, f"{key}{k}"))
            for key, db in dbs.items():
                sub = statistics.median(r[0] for r in runs[key])
                change = statistics.median(r[1] for r in runs[key])
                print(f"{name:<12}{key:<10}{sub:>15.0f}{change:>17.2f}")
                db.dispose()


if __name__ == "__main__":
    main()
