"""The per-batch task counts kept by triggers (task_count) equal a GROUP BY of the task
table after every kind of write: submissions (with dependencies), claims, starts, ends,
retries, kills, a lease that runs out, relaunches, a batch stopped, a task and a batch
deleted, and a batch whose id SQLite gives again. In process, on both databases."""
import threading
import time

from sqlalchemy import func, select

from apicalls import acked, call, dispatch, poll, register, rep, sweep
from scitq.server import task_store
from scitq.server.models import Task

LEASE = 0.5


def truth(app):
    """{batch_id: counts} by counting the task table."""
    with app.extensions["scitq"].db.read() as s:
        rows = {}
        for bid, st, n in s.execute(select(Task.batch_id, Task.status, func.count())
                                    .group_by(Task.batch_id, Task.status)):
            rows.setdefault(bid, {})[st] = n
        return {bid: task_store.summarize(c) for bid, c in rows.items()}


def kept(app):
    with app.extensions["scitq"].db.read() as s:
        return task_store.batch_counts(s)


def check(app, compact=False):
    assert kept(app) == truth(app)
    if compact:
        with app.extensions["scitq"].db.write() as s:
            task_store.compact_counts(s)
        assert kept(app) == truth(app)


def bulk(client, tasks, batch):
    return call(client, "POST", "/tasks/bulk", 201, json={"tasks": tasks, "batch": batch})["ids"]


def held(app, client, wid):
    dispatch(app)
    return poll(client, wid)["assignments"]


def test_counts_follow_every_write(app, client):
    a = bulk(client, [{"command": f"a{i}", "retries": 1} for i in range(8)]
             + [{"ref": "root", "command": "root"},
                {"command": "child", "depends_on": ["root"]}], "a")
    b = bulk(client, [{"command": f"b{i}"} for i in range(5)], "b")
    check(app)
    assert kept(app)[call(client, "GET", "/batches/a")["id"]]["waiting"] == 1

    wid = register(client, "w", concurrency=6)
    first = held(app, client, wid)                       # claims: pending -> assigned
    assert first
    check(app)
    for x in first[:4]:                                  # starts
        acked(client, wid, rep(x["execution_id"], "running", pid=100 + x["execution_id"]))
    check(app)
    acked(client, wid, rep(first[0]["execution_id"], "succeeded", return_code=0),
          rep(first[1]["execution_id"], "failed", return_code=1),      # retried: pending again
          rep(first[2]["execution_id"], "succeeded", return_code=0))
    check(app, compact=True)
    call(client, "POST", f"/tasks/{first[3]['task_id']}/kill")        # killed while running
    acked(client, wid, rep(first[3]["execution_id"], "failed", return_code=-9))
    call(client, "POST", f"/tasks/{b[-1]}/kill")                       # a pending one: canceled
    check(app)

    time.sleep(LEASE * 3)                                # the worker goes silent
    sweep(app)
    check(app, compact=True)

    failed = [t for t in a if call(client, "GET", f"/tasks/{t}")["status"] == "failed"]
    for t in failed:
        call(client, "POST", f"/tasks/{t}/relaunch")
    call(client, "POST", "/batches/a/stop")
    call(client, "DELETE", f"/tasks/{b[0]}")
    check(app)

    call(client, "DELETE", "/batches/b")
    check(app, compact=True)
    assert call(client, "GET", "/batches")[0]["name"] == "a"
    bulk(client, [{"command": "again"}] * 3, "c")        # SQLite may give b's id again
    check(app, compact=True)
    c = call(client, "GET", "/batches/c")["counts"]
    assert (c["pending"], c["total"]) == (3, 3)


def test_concurrent_writers_keep_exact_counts(app, client):
    """Submissions, claims and reports from several threads at once, and the counts folded
    meanwhile: no lost update, no deadlock (PostgreSQL's rows of differences are only
    inserted)."""
    wids = [register(client, f"w{i}", concurrency=4) for i in range(3)]
    bulk(client, [{"command": "x"}] * 60, "big")
    errors = []

    def work(wid):
        try:
            c = app.test_client()
            for _ in range(5):
                for x in held(app, c, wid):
                    acked(c, wid, rep(x["execution_id"], "succeeded", return_code=0))
                bulk(c, [{"command": "y"}] * 5, f"small{wid}")
        except Exception as exc:     # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    def compact(stop):
        """What the rollup pass does every few seconds, here all the while."""
        try:
            while not stop.is_set():
                with app.extensions["scitq"].db.write() as s:
                    task_store.compact_counts(s)
        except Exception as exc:     # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    stop = threading.Event()
    compactor = threading.Thread(target=compact, args=(stop,))
    compactor.start()
    threads = [threading.Thread(target=work, args=(w,)) for w in wids]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        compactor.join()
    assert errors == []
    check(app, compact=True)
    assert sum(c["succeeded"] for c in kept(app).values()) > 0
