"""The dispatcher and the workers' side of the API: polls, reports, leases, events.

The dispatcher thread is not started; tests call `dispatch()` and `sweep()` themselves.
The lease is 1 second, so a test makes a worker silent by sleeping just past it.
"""
import threading
import time

import pytest

from apicalls import (API, acked, assign, call, chunk, dispatch, events, execution, executions_of,
                      last_event, output, poll, register, rep, run_all, send, submit, sweep, task)

LEASE = 1.0


# --- dispatching -------------------------------------------------------------

def test_worker_gets_at_most_concurrency_plus_prefetch(app, client):
    submit(client, *[f"t{i}" for i in range(10)])
    wid = register(client, "w1", concurrency=2, prefetch=1)
    assert dispatch(app) == {wid: 3}
    assert dispatch(app) == {}
    held = poll(client, wid)["assignments"]
    assert len(held) == 3 and len(executions_of(client, wid)) == 3
    assert call(client, "GET", f"/workers/{wid}")["running"] == 3

    acked(client, wid, rep(held[0]["execution_id"], "succeeded", return_code=0))
    assert dispatch(app) == {wid: 1}
    assert call(client, "GET", f"/workers/{wid}")["running"] == 3


def test_two_workers_share_the_queue(app, client):
    ids = submit(client, *[f"t{i}" for i in range(20)])
    w1 = register(client, "w1", concurrency=2, prefetch=1)
    w2 = register(client, "w2", concurrency=3)
    done = run_all(app, client, {w1: 3, w2: 3})

    assert done[w1] and done[w2]
    assert sorted(done[w1] + done[w2]) == ids                  # each task once, none forgotten
    for task_id in ids:
        t = task(client, task_id)
        assert (t["status"], t["attempt"], len(t["executions"])) == ("succeeded", 1, 1)


def test_oldest_task_first(app, client):
    a = submit(client, "a1", "a2", batch="A")
    b = submit(client, "b1", batch="B")
    a += submit(client, "a3", batch="A")
    wid = register(client, "w1")
    done = run_all(app, client, {wid: 1})
    assert done[wid] == sorted(a + b) == [a[0], a[1], b[0], a[2]]


def test_worker_with_a_batch_only_gets_that_batch(app, client):
    older = submit(client, "a1", "a2", batch="A")
    mine = submit(client, "b1", "b2", batch="B")
    specialist = register(client, "special", concurrency=5, batch="B")
    idle = register(client, "idle", concurrency=5, batch="C")
    anyone = register(client, "anyone", concurrency=5)

    assert dispatch(app) == {specialist: 2, anyone: 2}
    assert [a["task_id"] for a in poll(client, specialist)["assignments"]] == mine
    assert [a["task_id"] for a in poll(client, anyone)["assignments"]] == older
    assert poll(client, idle)["assignments"] == []


# --- polling -----------------------------------------------------------------

def test_poll_returns_assignments_not_known(app, client):
    ids = submit(client, "one", "two", "three", batch="polled")
    wid = register(client, "w1", concurrency=3)
    dispatch(app)
    held = poll(client, wid)["assignments"]
    assert [a["task_id"] for a in held] == ids
    first = held[0]
    assert (first["command"], first["batch"], first["shell"], first["attempt"]) == ("one", "polled", True, 1)
    assert first["execution_id"] == task(client, ids[0])["executions"][0]["id"]

    known = [held[0]["execution_id"], held[2]["execution_id"]]
    assert poll(client, wid, known=known)["assignments"] == [held[1]]
    assert poll(client, wid, known=[a["execution_id"] for a in held])["assignments"] == []


def test_poll_waits_at_most_a_third_of_the_lease(client):
    """A poll heartbeats only when it starts, so it must end well within the lease."""
    wid = register(client, "w1")
    start = time.monotonic()
    poll(client, wid, wait=30)
    assert LEASE / 3 - 0.05 <= time.monotonic() - start < LEASE / 3 + 0.3


def test_poll_answers_at_once_when_settings_differ(client):
    wid = register(client, "w1", concurrency=1)
    said = {"concurrency": 3, "prefetch": None, "status": "running"}     # prefetch: auto
    call(client, "PUT", f"/workers/{wid}", json={"concurrency": 3})

    start = time.monotonic()
    answer = poll(client, wid, wait=0.3, **said)               # nothing new: it waits
    assert time.monotonic() - start >= 0.25
    assert (answer["assignments"], answer["concurrency"]) == ([], 3)

    start = time.monotonic()
    answer = poll(client, wid, wait=30, **dict(said, concurrency=1))
    assert time.monotonic() - start < 0.2
    assert (answer["concurrency"], answer["prefetch"], answer["status"]) == (3, None, "running")

    call(client, "PUT", f"/workers/{wid}", json={"prefetch": 5})       # pinned by a user
    start = time.monotonic()
    answer = poll(client, wid, wait=30, **said)
    assert time.monotonic() - start < 0.2 and answer["prefetch"] == 5


def test_poll_wakes_up_for_new_work(app, client):
    wid = register(client, "w1")
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(poll(app.test_client(), wid, wait=20)))
    start = time.monotonic()
    waiting.start()
    time.sleep(0.05)        # it hangs (a poll waits LEASE / 3 at most here: 0.33 s)
    (task_id,) = submit(client, "late")
    dispatch(app)
    waiting.join(10)
    assert not waiting.is_alive()
    assert time.monotonic() - start < 10
    assert [a["task_id"] for a in answers[0]["assignments"]] == [task_id]


def test_a_waiting_poll_answers_with_what_the_pass_read(app, client):
    """A pass hands its new assignments to the waiting poll, which answers with them as they
    are: no second read of the database between the pass and the answer."""
    from sqlalchemy import event
    wid = register(client, "w1")
    looked = poll(client, wid, wait=0)          # what a look gives: nothing yet
    assert looked["assignments"] == []
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(poll(app.test_client(), wid, wait=5)))
    waiting.start()
    time.sleep(0.1)                             # it hangs (LEASE / 3 here: 0.33 s)
    (task_id,) = submit(client, "late")
    statements = []         # (thread, statement) of each statement while the pass runs and after
    engine = app.extensions["scitq"].db.engine
    count = lambda *args: statements.append((threading.get_ident(), args[2]))     # noqa: E731
    event.listen(engine, "before_cursor_execute", count)
    try:
        dispatch(app)
        waiting.join(10)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert not waiting.is_alive()
    (handed,) = answers[0]["assignments"]
    assert handed["task_id"] == task_id and handed["command"] == "late"
    assert [sql for thread, sql in statements if thread == waiting.ident] == []
    assert any(thread == threading.get_ident() for thread, _ in statements)     # the pass's
    # ...and it is what a look reads: a new poll that names nothing known gets the same
    assert poll(client, wid, wait=0)["assignments"] == [handed]


# --- reports -----------------------------------------------------------------

def test_running_then_succeeded_with_output(app, client):
    (task_id,) = submit(client, "echo hello")
    wid = register(client, "w1")
    (a,) = assign(app, client, wid)
    eid = a["execution_id"]

    acked(client, wid, rep(eid, "running", pid=4242))
    assert task(client, task_id)["status"] == "running"
    assert execution(client, eid)["pid"] == 4242
    assert output(client, task_id).headers["X-Scitq-Complete"] == "false"

    acked(client, wid, rep(eid, "succeeded", return_code=0, stdout=chunk(b"hello\n"),
                           stderr=chunk(b"warn")))
    t = task(client, task_id)
    assert t["status"] == "succeeded"
    ex = t["executions"][0]
    assert (ex["status"], ex["return_code"], ex["stdout_bytes"], ex["stderr_bytes"]) == ("succeeded", 0, 6, 4)
    r = output(client, task_id)
    assert r.data == b"hello\n"
    assert (r.headers["X-Scitq-Size"], r.headers["X-Scitq-Complete"]) == ("6", "true")
    assert output(client, task_id, stream="stderr").data == b"warn"
    assert output(client, task_id, offset=2, limit=2).data == b"ll"
    assert call(client, "GET", "/workers/w1")["running"] == 0


def test_repeated_report_is_acked_without_change(app, client):
    (task_id,) = submit(client, "echo hello")
    wid = register(client, "w1")
    (a,) = assign(app, client, wid)
    final = rep(a["execution_id"], "succeeded", return_code=0, stdout=chunk(b"hello\n"))
    acked(client, wid, final)
    before, mark = task(client, task_id), last_event(app)

    acked(client, wid, final)
    acked(client, wid, final)
    assert task(client, task_id) == before
    assert output(client, task_id).data == b"hello\n"
    assert events(app, mark) == []


def test_failed_report(app, client):
    (task_id,) = submit(client, "exit 3")
    wid = register(client, "w1")
    (a,) = assign(app, client, wid)
    eid = a["execution_id"]
    refused = send(client, wid, rep(eid, "succeeded", return_code=3))["refused"]
    assert [(r["execution_id"], r["status"]) for r in refused] == [(eid, 400)]
    assert task(client, task_id)["status"] == "assigned"

    acked(client, wid, rep(eid, "failed", return_code=3, error="exit status 3"))
    t = task(client, task_id)
    assert (t["status"], t["attempt"]) == ("failed", 1)
    ex = t["executions"][0]
    assert (ex["status"], ex["return_code"], ex["error"]) == ("failed", 3, "exit status 3")
    assert ex["ended_at"] is not None


def test_released_task_goes_back_to_pending(app, client):
    first, second = submit(client, "one", "two")
    wid = register(client, "w1", concurrency=1, prefetch=1)
    running, prefetched = assign(app, client, wid)
    acked(client, wid, rep(running["execution_id"], "running"))
    assert task(client, second)["attempt"] == 1

    refused = send(client, wid, rep(running["execution_id"], "released"))["refused"]
    assert [r["status"] for r in refused] == [409]                 # too late: it started
    acked(client, wid, rep(prefetched["execution_id"], "released"))
    t = task(client, second)
    assert (t["status"], t["attempt"]) == ("pending", 0)
    assert execution(client, prefetched["execution_id"])["status"] == "released"
    assert task(client, first)["status"] == "running"

    (again,) = assign(app, client, wid)
    assert (again["task_id"], again["attempt"]) == (second, 1)
    assert again["execution_id"] != prefetched["execution_id"]


def test_report_on_another_workers_execution_is_refused(app, client):
    (task_id,) = submit(client, "mine")
    owner = register(client, "owner")
    intruder = register(client, "intruder")
    (a,) = assign(app, client, owner)
    before, mark = task(client, task_id), last_event(app)

    answer = send(client, intruder, rep(a["execution_id"], "succeeded", return_code=0),
                  rep(999999, "running"))
    assert answer["acked"] == []
    assert [(r["execution_id"], r["status"]) for r in answer["refused"]] == [
        (a["execution_id"], 403), (999999, 404)]
    assert all(isinstance(r["error"], str) for r in answer["refused"])
    assert task(client, task_id) == before
    assert events(app, mark) == []


# --- leases --------------------------------------------------------------------

@pytest.fixture
def lost_worker(app, client):
    """w1 held two tasks (one running) and fell silent; w2 kept talking; the sweep ran."""
    submit(client, "a", "b", "c")
    w1 = register(client, "w1", concurrency=2)
    w2 = register(client, "w2", concurrency=1)
    held = assign(app, client, w1)
    acked(client, w1, rep(held[0]["execution_id"], "running", pid=7))
    (kept,) = assign(app, client, w2)
    time.sleep(LEASE + 0.2)
    send(client, w2)                        # w2 still talks (a report always heartbeats)
    assert sweep(app) == 1
    return {"w1": w1, "held": held, "kept": kept}


def test_sweep_gives_back_the_work_of_a_silent_worker(app, client, lost_worker):
    lw = lost_worker
    assert call(client, "GET", "/workers/w1")["status"] == "lost"
    assert call(client, "GET", "/workers/w2")["status"] == "running"
    for a in lw["held"]:
        ex = execution(client, a["execution_id"])
        assert ex["status"] == "lost" and "lease" in ex["error"]
        t = task(client, a["task_id"])
        assert (t["status"], t["attempt"]) == ("pending", 0)
    assert execution(client, lw["kept"]["execution_id"])["status"] == "assigned"
    assert sweep(app) == 0
    assert dispatch(app) == {}          # w2 is full, w1 is lost: nobody takes the tasks


def test_late_report_from_a_lost_execution_is_refused(app, client, lost_worker):
    w1, (running, _) = lost_worker["w1"], lost_worker["held"]
    before = task(client, running["task_id"])          # with its executions
    mark = last_event(app)

    answer = send(client, w1, rep(running["execution_id"], "succeeded", return_code=0,
                                  stdout=chunk(b"too late")))
    assert answer["acked"] == []
    assert [(r["execution_id"], r["status"]) for r in answer["refused"]] == [(running["execution_id"], 409)]
    assert task(client, running["task_id"]) == before
    assert output(client, running["task_id"]).data == b""
    r = client.post(f"{API}/executions/{running['execution_id']}/output",
                    query_string={"stream": "stdout", "offset": 0}, data=b"too late")
    assert r.status_code == 409
    assert not any(kind.startswith("execution.") for kind, *_ in events(app, mark))


def test_worker_restart_gives_back_what_it_held(app, client):
    (task_id,) = submit(client, "x")
    wid = register(client, "w1")
    (a,) = assign(app, client, wid)
    assert register(client, "w1") == wid
    assert execution(client, a["execution_id"])["status"] == "lost"
    assert (task(client, task_id)["status"], task(client, task_id)["attempt"]) == ("pending", 0)
    (again,) = assign(app, client, wid)
    assert again["task_id"] == task_id and again["execution_id"] != a["execution_id"]


def test_worker_news_draining_and_offline(app, client):
    ids = submit(client, "a", "b", "c")
    wid = register(client, "w1", concurrency=2)
    first, second = assign(app, client, wid)
    acked(client, wid, rep(first["execution_id"], "running"))
    call(client, "POST", f"/workers/{wid}/reports", json={"status": "draining"})
    assert call(client, "GET", "/workers/w1")["status"] == "draining"
    acked(client, wid, rep(second["execution_id"], "succeeded", return_code=0))
    assert dispatch(app) == {}                                  # draining: nothing new

    call(client, "POST", f"/workers/{wid}/reports", json={"status": "offline"})
    assert call(client, "GET", "/workers/w1")["status"] == "offline"
    assert [task(client, i)["status"] for i in ids] == ["pending", "succeeded", "pending"]


# --- the event log -------------------------------------------------------------

def test_every_state_change_writes_an_event(app, client):
    mark = 0

    def expect(*kinds):
        nonlocal mark
        new = events(app, mark)
        assert [e[0] for e in new] == list(kinds)
        mark = last_event(app)
        return new

    (task_id,) = submit(client, "x", batch="ev")
    (_, created) = expect("batch.created", "tasks.created")
    assert created[3] == {"count": 1, "first": task_id, "last": task_id}
    wid = register(client, "w1")
    expect("worker.registered")
    (a,) = assign(app, client, wid)
    (assigned,) = expect("execution.assigned")
    assert assigned[1:] == ("execution", a["execution_id"], {"task_id": task_id, "worker": "w1"})
    acked(client, wid, rep(a["execution_id"], "running"))
    expect("execution.running")
    acked(client, wid, rep(a["execution_id"], "failed", return_code=1))
    (failed,) = expect("execution.failed")
    assert failed[3]["return_code"] == 1

    call(client, "POST", f"/tasks/{task_id}/relaunch")
    (relaunched,) = expect("task.relaunched")
    assert relaunched[1:3] == ("task", task_id)
    (b,) = assign(app, client, wid)
    expect("execution.assigned")
    acked(client, wid, rep(b["execution_id"], "released"))
    expect("execution.released")

    call(client, "POST", "/batches/ev/pause")
    expect("batch.paused")
    call(client, "POST", "/batches/ev/resume")
    expect("batch.resumed")
    call(client, "PUT", "/workers/w1", json={"concurrency": 2})
    expect("worker.changed")

    (c,) = assign(app, client, wid)
    expect("execution.assigned")
    time.sleep(LEASE + 0.2)
    sweep(app)
    lost, _ = expect("execution.lost", "worker.lost")
    assert lost[2] == c["execution_id"]
    poll(client, wid)
    expect("worker.back")

    call(client, "PUT", f"/tasks/{task_id}", json={"command": "y"})
    expect("task.updated")
    call(client, "DELETE", "/workers/w1")
    expect("worker.deleted")
    call(client, "DELETE", f"/tasks/{task_id}")
    expect("task.deleted")
    call(client, "DELETE", "/batches/ev")
    expect("batch.deleted")


# --- edge cases ---------------------------------------------------------------

def test_resent_batch_of_reports_is_acked(app, client):
    submit(client, "x")
    wid = register(client, "w1")
    (a,) = assign(app, client, wid)
    batch = [rep(a["execution_id"], "running", pid=1), rep(a["execution_id"], "succeeded", return_code=0)]
    acked(client, wid, *batch)
    acked(client, wid, *batch)          # the worker did not hear the first answer


def test_reports_with_more_bring_the_next_tasks(app, client):
    ids = submit(client, *[f"t{i}" for i in range(8)])
    wid = register(client, "w1", concurrency=2, prefetch=1)
    first = assign(app, client, wid)
    assert [a["task_id"] for a in first] == ids[:3]
    mark = last_event(app)

    answer = call(client, "POST", f"/workers/{wid}/reports", json={"more": True, "reports": [
        rep(first[0]["execution_id"], "running", pid=1),
        rep(first[0]["execution_id"], "succeeded", return_code=0),
        rep(first[1]["execution_id"], "succeeded", return_code=0)]})
    assert answer["acked"] == [first[0]["execution_id"]] * 2 + [first[1]["execution_id"]]
    new = answer["assignments"]
    assert [a["task_id"] for a in new] == ids[3:5]          # back to concurrency + prefetch
    assert new == [dict(a, attempt=1) for a in new]
    assert set(new[0]) == set(first[0])                     # what a poll gives, field for field
    assert [task(client, t)["status"] for t in ids[:6]] == ["succeeded"] * 2 + ["assigned"] * 3 + ["pending"]
    kinds = [(kind, oid) for kind, _, oid, _ in events(app, mark)]
    assert kinds == [("execution.running", first[0]["execution_id"]),
                     ("execution.succeeded", first[0]["execution_id"]),
                     ("execution.succeeded", first[1]["execution_id"]),
                     ("execution.assigned", new[0]["execution_id"]),
                     ("execution.assigned", new[1]["execution_id"])]
    # a poll sent before this answer came does not give them again, and a pass has nothing to add
    assert poll(client, wid, known=[first[2]["execution_id"]])["assignments"] == []
    assert dispatch(app) == {}


def test_reports_with_more_fill_the_room_left_and_only_from_the_workers_batch(app, client):
    """The inline claim's LIMIT is the worker's room, counted in the claim itself: an end
    brings one task, a full worker none, and a worker of one batch only that batch's."""
    submit(client, "o1", "o2", batch="other")
    mine = submit(client, *[f"m{i}" for i in range(5)], batch="mine")
    wid = register(client, "w1", concurrency=3, prefetch=0, batch="mine")
    held = assign(app, client, wid)
    assert [a["task_id"] for a in held] == mine[:3]
    answer = call(client, "POST", f"/workers/{wid}/reports", json={"more": True, "reports": [
        rep(held[0]["execution_id"], "succeeded", return_code=0, pid=1)]})
    assert [a["task_id"] for a in answer["assignments"]] == [mine[3]]
    assert call(client, "POST", f"/workers/{wid}/reports", json={"more": True, "reports": []})["assignments"] == []
    assert call(client, "GET", "/workers/w1")["running"] == 3


def test_reports_with_more_respect_status_and_caps(app, client):
    submit(client, "c1", "c2", "c3", batch="capped")
    call(client, "PUT", "/batches/capped", json={"concurrency": 2})
    wid = register(client, "w1", concurrency=4)
    held = assign(app, client, wid)
    assert len(held) == 2
    # a report with more takes nothing past the batch's cap
    answer = call(client, "POST", f"/workers/{wid}/reports",
                  json={"more": True, "reports": [rep(held[0]["execution_id"], "running")]})
    assert answer["assignments"] == []
    # a paused worker takes nothing either
    call(client, "PUT", f"/workers/{wid}", json={"status": "paused"})
    answer = call(client, "POST", f"/workers/{wid}/reports",
                  json={"more": True, "reports": [rep(held[1]["execution_id"], "succeeded", return_code=0)]})
    assert answer["assignments"] == []
    call(client, "PUT", f"/workers/{wid}", json={"status": "running"})
    answer = call(client, "POST", f"/workers/{wid}/reports", json={"more": True, "reports": []})
    assert [a["name"] for a in answer["assignments"]] == [None]
    # without more, the answer is as before
    assert send(client, wid) == {"acked": [], "refused": []}


def test_worker_filled_by_its_reports_is_not_idle(app, client):
    wid = register(client, "w1", concurrency=1)
    dispatch(app)                                   # nothing to do: idle since now
    assert call(client, "GET", "/workers/w1")["running"] == 0
    with app.extensions["scitq"].db.read() as s:
        from scitq.server.models import Worker
        assert s.get(Worker, wid).idle_since is not None
    submit(client, "x")
    answer = call(client, "POST", f"/workers/{wid}/reports", json={"more": True, "reports": []})
    assert len(answer["assignments"]) == 1
    with app.extensions["scitq"].db.read() as s:
        assert s.get(Worker, wid).idle_since is None


def test_a_pass_takes_only_workers_with_room_or_marked_idle(app, client):
    """A pass reads and locks the workers it may fill, and those marked idle, not the whole
    fleet: a full worker's row stays free for its own reports."""
    from sqlalchemy import update

    from scitq.server.dispatch import PASS_WORKERS
    from scitq.server.models import Worker
    submit(client, *[f"t{i}" for i in range(6)])
    full = register(client, "full", concurrency=2, prefetch=0)
    sized = register(client, "sized", concurrency=1, prefetch=None, depth=2)
    assert dispatch(app) == {full: 2, sized: 3}
    marked = register(client, "marked", concurrency=1, prefetch=0)
    spare = register(client, "spare", concurrency=3, prefetch=0)
    assert dispatch(app) == {marked: 1}              # one task left: the oldest worker first
    db = app.extensions["scitq"].db
    with db.write() as s:    # a mark left on a full worker: the pass must see it to clear it
        s.execute(update(Worker).where(Worker.id == full).values(idle_since=Worker.created_at))
    with db.read() as s:
        rows = {r.id: r.active for r in s.connection().execute(PASS_WORKERS)}
    assert rows == {full: 2, spare: 0}      # sized and marked are full, full is marked idle
    dispatch(app)
    with db.read() as s:
        assert s.get(Worker, full).idle_since is None
        assert s.get(Worker, spare).idle_since is not None


def test_mixed_reports_in_one_request(app, client):
    """Starts and successes take the fast way, failures, releases and signals the ORM's:
    in one request, each execution ends as its own reports say."""
    ids = submit(client, "ok", "fails", "given back", "paused", "cached")
    call(client, "PUT", f"/tasks/{ids[1]}", json={"retries": 1})
    wid = register(client, "w1", concurrency=5)
    held = {a["task_id"]: a["execution_id"] for a in assign(app, client, wid)}
    ok, fails, back, paused = (held[t] for t in ids[:4])
    call(client, "POST", f"/executions/{held[ids[4]]}/cache", json={"inputs": []})
    acked(client, wid, rep(held[ids[4]], "running"), rep(held[ids[4]], "succeeded", return_code=0),
          rep(paused, "running", pid=12))
    call(client, "POST", f"/tasks/{ids[3]}/pause")
    seq = poll(client, wid, known=list(held.values()))["signals"][0]["seq"]
    cached = call(client, "POST", "/tasks", 201, json={"command": "cached", "use_cache": True})["id"]
    dispatch(app)
    (c,) = poll(client, wid, known=list(held.values()))["assignments"]
    assert call(client, "POST", f"/executions/{c['execution_id']}/cache",
                json={"inputs": []})["hit"]["execution_id"] == held[ids[4]]
    mark = last_event(app)

    answer = send(client, wid,
                  rep(ok, "running", pid=10), rep(fails, "running", pid=11),
                  rep(paused, "running", pid=12), rep(back, "released"),
                  rep(fails, "failed", return_code=2, stderr=chunk(b"boom")),
                  rep(paused, "signaled", signal="pause", seq=seq),
                  rep(ok, "succeeded", return_code=0, stdout=chunk(b"fine\n")),
                  rep(c["execution_id"], "succeeded", return_code=0, cached_from=held[ids[4]]),
                  rep(999999, "running"), rep(ok, "running", pid=10))
    assert answer["acked"] == [ok, fails, paused, back, fails, paused, ok, c["execution_id"], ok]
    assert [r["status"] for r in answer["refused"]] == [404]
    status = {t: task(client, t) for t in ids[:4] + [cached]}
    assert [status[t]["status"] for t in ids[:4] + [cached]] == \
        ["succeeded", "pending", "pending", "running", "succeeded"]
    assert (status[ids[1]]["attempt"], status[ids[2]]["attempt"]) == (1, 0)
    assert status[ids[1]]["executions"][0]["reason"] == "exit_code"
    assert execution(client, paused)["paused"] is True
    assert (execution(client, ok)["pid"], execution(client, ok)["stdout_bytes"]) == (10, 5)
    assert execution(client, c["execution_id"])["cached_from"] == held[ids[4]]
    assert output(client, ids[0]).data == b"fine\n"
    order = [(kind, oid) for kind, otype, oid, _ in events(app, mark) if otype == "execution"]
    for eid, kinds in ((ok, ["execution.running", "execution.succeeded"]),
                       (fails, ["execution.running", "execution.failed"]),
                       (back, ["execution.released"])):
        assert [k for k, o in order if o == eid] == kinds


def test_an_end_with_a_pid_brings_its_start(app, client):
    """A task that ended before its start was sent: the worker folds the start into the end
    (its pid), and the server records both, start first, by either way (a success takes the
    fast one, a failure the ORM's); a refused end records no start either."""
    ids = submit(client, "quick", "quick failure", "bad", "no pid")
    wid = register(client, "w1", concurrency=4)
    held = {a["task_id"]: a["execution_id"] for a in assign(app, client, wid)}
    ok, fails, bad, plain = (held[t] for t in ids)
    mark = last_event(app)
    answer = send(client, wid, rep(ok, "succeeded", return_code=0, pid=21),
                  rep(fails, "failed", return_code=3, pid=22),
                  rep(bad, "succeeded", return_code=1, pid=23),
                  rep(plain, "failed", return_code=1, reason="killed", error="killed before it started"))
    assert answer["acked"] == [ok, fails, plain]
    assert [r["execution_id"] for r in answer["refused"]] == [bad]
    for eid, pid, status in ((ok, 21, "succeeded"), (fails, 22, "failed"), (bad, None, "assigned")):
        ex = execution(client, eid)
        assert (ex["pid"], ex["status"]) == (pid, status)
        assert (ex["started_at"] is not None) == (pid is not None)
    assert task(client, ids[0])["status"] == "succeeded"
    order = [(kind, oid, detail) for kind, otype, oid, detail in events(app, mark) if otype == "execution"]
    for eid, kinds in ((ok, ["execution.running", "execution.succeeded"]),
                       (fails, ["execution.running", "execution.failed"]),
                       (bad, []), (plain, ["execution.failed"])):
        assert [k for k, o, _ in order if o == eid] == kinds
    assert [d["pid"] for k, o, d in order if k == "execution.running"] == [21, 22]


def test_poll_with_nan_wait_returns(app, client):
    wid = register(client, "w1")
    answers = []
    body = '{"wait": NaN, "known": []}'
    waiting = threading.Thread(target=lambda: answers.append(app.test_client().post(
        f"{API}/workers/{wid}/poll", data=body, content_type="application/json")))
    waiting.start()
    try:
        waiting.join(3)
        assert not waiting.is_alive(), "the poll is still hanging"
        assert answers[0].status_code in (200, 400)
    finally:
        submit(client, "wake it up")       # an assignment ends the hanging poll
        dispatch(app)
        waiting.join(10)


def test_out_of_range_return_code_is_refused(app, client):
    (task_id,) = submit(client, "x")
    wid = register(client, "w1")
    (a,) = assign(app, client, wid)
    answer = send(client, wid, rep(a["execution_id"], "failed", return_code=2 ** 40))
    assert [r["status"] for r in answer["refused"]] == [400]
    assert task(client, task_id)["status"] == "assigned"


def test_polling_worker_is_not_lost(app, client):
    wid = register(client, "w1")
    deadline = time.monotonic() + LEASE + 0.5
    while time.monotonic() < deadline:
        poll(client, wid)
        time.sleep(0.1)
    assert sweep(app) == 0
    assert call(client, "GET", "/workers/w1")["status"] == "running"


def test_settings_set_on_the_server_outlive_a_restart_and_a_lost_spell(app, client):
    wid = register(client, "w1", concurrency=1, batch="its-own")
    call(client, "PUT", "/workers/w1", json={"concurrency": 3, "status": "paused"})
    # The same name registers again (its process restarted) with its own flags.
    again = call(client, "POST", "/workers", 201, json={"name": "w1", "concurrency": 1,
                                                        "prefetch": 2, "batch": "other"})
    assert again["id"] == wid
    assert (again["concurrency"], again["status"], again["prefetch"], again["batch"]) == \
        (3, "paused", 2, "other")           # what the server never set comes from the flags
    assert again["set_on_server"] == {"concurrency": 3, "status": "paused"}
    answer = poll(client, wid, concurrency=1, prefetch=2, status="running")
    assert (answer["concurrency"], answer["status"]) == (3, "paused")
    submit(client, "x", batch="other")
    assert dispatch(app) == {}                                  # paused: it takes nothing

    time.sleep(LEASE + 0.2)                                     # silent: lost, then heard again
    assert sweep(app) == 1 and call(client, "GET", "/workers/w1")["status"] == "lost"
    assert poll(client, wid)["status"] == "paused"
    assert call(client, "GET", "/workers/w1")["status"] == "paused"

    call(client, "PUT", "/workers/w1", json={"status": "running", "batch": "mine"})
    again = call(client, "POST", "/workers", 201, json={"name": "w1", "batch": "other"})
    assert (again["status"], again["batch"], again["concurrency"]) == ("running", "mine", 3)
    assert again["set_on_server"] == {"concurrency": 3, "batch": "mine"}

    # Draining holds over a lost spell (the same process still drains), not over a new process.
    call(client, "PUT", "/workers/w1", json={"status": "draining"})
    time.sleep(LEASE + 0.2)
    assert sweep(app) == 1
    assert poll(client, wid)["status"] == "draining"
    again = call(client, "POST", "/workers", 201, json={"name": "w1"})
    assert again["status"] == "running" and "status" not in again["set_on_server"]
    # Deleting the worker forgets them: a new one of that name takes its flags.
    call(client, "DELETE", "/workers/w1")
    fresh = call(client, "POST", "/workers", 201, json={"name": "w1", "concurrency": 2})
    assert (fresh["concurrency"], fresh["batch"], fresh["set_on_server"]) == (2, None, {})


def test_a_poll_names_what_was_given_away_while_the_worker_was_silent(app, client):
    (task_id,) = submit(client, "long")
    slow = register(client, "slow")
    (a,) = assign(app, client, slow)
    time.sleep(LEASE + 0.1)
    assert sweep(app) == 1                      # thought lost: the task is given back
    answer = poll(client, slow, known=[a["execution_id"]])
    assert answer["gone"] == [a["execution_id"]]
    assert poll(client, slow, known=[])["gone"] == []


def test_a_big_submission_is_claimed_without_reading_it_all(app, client):
    """A claim reads the few pending tasks it takes, whatever the statistics say: after a
    big submission (the pass brings them up to date first: stale, they planned "read every
    pending task, sort, keep n") and after half of it is done (they still say "all pending":
    a walk of the primary key went through every task done)."""
    from datetime import datetime, timezone

    from sqlalchemy import text

    from scitq.server.dispatch import CLAIM_ANY
    dispatcher = app.extensions["scitq"].dispatcher
    db = app.extensions["scitq"].db
    submit(client, "first")
    for _ in range(2):
        call(client, "POST", "/tasks/bulk", expect=201,
             json={"tasks": [{"command": "true"}] * 5000, "batch": "big"})
    claim = CLAIM_ANY.compile(db.engine).construct_expanded_state(
        {"n": 16, "now": datetime.now(timezone.utc), "full": [-1], "taken": [-1]})
    if db.is_sqlite:        # no statistics unless asked for: nothing to refresh
        assert dispatcher.fresh_statistics() is False
        with db.engine.connect() as conn:
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + claim.statement,
                                        tuple(claim.parameters[k] for k in claim.positiontup)).all()
        steps = [row[-1] for row in plan]       # an index walk in id order: no sort
        assert any(step.startswith("SEARCH task USING INDEX") for step in steps), steps
        assert not any("TEMP B-TREE" in step for step in steps), steps
        return
    assert dispatcher.fresh_statistics() is True
    assert dispatcher.fresh_statistics() is False       # until as many again come

    def rows_read():
        with db.engine.connect() as conn:
            ((plan,),) = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + claim.statement,
                                              claim.parameters).one()
        nodes = [plan["Plan"]]
        for node in nodes:
            nodes += node.get("Plans", [])
        return max(n["Actual Rows"] * n["Actual Loops"] + n.get("Rows Removed by Filter", 0) for n in nodes)

    assert rows_read() <= 100
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE task SET status = 'succeeded' WHERE id <= 5000"))
    rows_read()         # the first scan marks the index entries of tasks done as dead
    assert rows_read() <= 100


def test_a_start_report_wakes_no_pass_an_end_does(app, client):
    """Only an end (or the worker's news) can give a worker room: a start reported alone (a
    full worker's, which asks for no `more`) wakes no dispatch pass; an end does."""
    dispatcher = app.extensions["scitq"].dispatcher
    woken = []
    dispatcher.wake = lambda at_once=True: woken.append(at_once)
    wid = register(client, "w1")
    submit(client, "a")
    (a,) = assign(app, client, wid)
    woken.clear()
    acked(client, wid, rep(a["execution_id"], "running", pid=10))
    assert woken == []
    acked(client, wid, rep(a["execution_id"], "succeeded", return_code=0))
    assert woken == [True]


def test_an_end_a_start_and_the_next_claim_take_seven_statements(app, client):
    """The request a busy worker sends for each task (the end of one, the start of the one
    queued behind it, `more`) is the server's hot path: its statements are counted, each
    costs the server about 0.15 ms of CPU under a fleet. Seven: the worker's row, the
    executions reported, their update, the tasks' update, the claim (whose LIMIT is the
    worker's room; it returns what runs its tasks), their executions, the events."""
    from sqlalchemy import event

    submit(client, *[f"t{i}" for i in range(4)])
    wid = register(client, "w1", concurrency=1, prefetch=1)
    first, queued = assign(app, client, wid)
    acked(client, wid, rep(first["execution_id"], "running", pid=1))
    statements = []
    engine = app.extensions["scitq"].db.engine
    count = lambda conn, cursor, statement, *args: statements.append(statement)     # noqa: E731
    event.listen(engine, "before_cursor_execute", count)
    try:
        answer = call(client, "POST", f"/workers/{wid}/reports", json={"more": True, "reports": [
            rep(first["execution_id"], "succeeded", return_code=0), rep(queued["execution_id"], "running", pid=2)]})
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert answer["acked"] == [first["execution_id"], queued["execution_id"]]
    (claimed,) = answer["assignments"]
    assert [task(client, t)["status"] for t in (first["task_id"], queued["task_id"], claimed["task_id"])] \
        == ["succeeded", "running", "assigned"]
    assert len(statements) == 7, "\n".join(s.split("\n")[0][:100] for s in statements)
    assert sum(s.lstrip().upper().startswith(("INSERT INTO EVENT", "COPY EVENT")) for s in statements) == 1
    mine = (first["execution_id"], queued["execution_id"], claimed["execution_id"])
    kinds = [kind for kind, _, object_id, _ in events(app) if object_id in mine]
    assert kinds[-3:] == ["execution.succeeded", "execution.running", "execution.assigned"]


def test_workers_heard_are_written_together_and_before_a_sweep(app, client):
    """A poll or a report only notes that its worker was heard (and the poll's stats); the
    dispatcher writes every note by one statement (about once a second, and first thing in a
    sweep). A worker marked lost is back at its next call, at once."""
    from sqlalchemy import event

    dispatcher = app.extensions["scitq"].dispatcher
    w1, w2 = register(client, "w1"), register(client, "w2")
    registered = {w["name"]: w["last_seen"] for w in call(client, "GET", "/workers")}
    time.sleep(0.05)
    statements = []
    engine = app.extensions["scitq"].db.engine
    count = lambda conn, cursor, statement, *args: statements.append(statement)     # noqa: E731
    event.listen(engine, "before_cursor_execute", count)
    try:
        poll(client, w1, stats={"load": 1.5, "memory": 40.0, "disk": float("nan")})
        send(client, w2)
        assert not [s for s in statements if s.lstrip().upper().startswith("UPDATE WORKER")]
        assert {w["name"]: w["last_seen"] for w in call(client, "GET", "/workers")} == registered
        dispatcher.write_heard()
        assert len([s for s in statements if s.lstrip().upper().startswith("UPDATE WORKER")]) == 1
    finally:
        event.remove(engine, "before_cursor_execute", count)
    seen = {w["name"]: w for w in call(client, "GET", "/workers")}
    assert all(seen[n]["last_seen"] > registered[n] for n in ("w1", "w2"))
    assert (seen["w1"]["load"], seen["w1"]["memory"], seen["w1"]["disk"]) == (1.5, 40.0, None)

    deadline = time.monotonic() + LEASE + 0.3       # heard only through notes, never lost
    while time.monotonic() < deadline:
        poll(client, w1)
        time.sleep(0.1)
    assert sweep(app) == 1                          # w2 was silent
    assert {w["name"]: w["status"] for w in call(client, "GET", "/workers")} == {"w1": "running", "w2": "lost"}
    send(client, w2)
    assert call(client, "GET", f"/workers/{w2}")["status"] == "running"
