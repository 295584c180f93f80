"""Task semantics through the API, in process: retries, dependencies, signals, batch stop and
cap, the cache. The dispatcher thread is not started; tests dispatch and report by hand, as
a worker would, so every step is exact. (The same paths with real processes are in
test_semantics_e2e.py.)"""
import time

import pytest

from apicalls import (acked, call, chunk, dispatch, output, poll, register, rep, send, submit,
                      sweep, task)

LEASE = 1.0


def add(client, expect=201, **spec):
    return call(client, "POST", "/tasks", expect, json={"command": "true", **spec})


def bulk(client, tasks, expect=201, batch=None):
    body = {"tasks": tasks, **({"batch": batch} if batch else {})}
    return call(client, "POST", "/tasks/bulk", expect, json=body)


def start(app, client, wid):
    """Dispatch, then say every new assignment runs; returns them."""
    dispatch(app)
    held = poll(client, wid)["assignments"]
    for a in held:
        acked(client, wid, rep(a["execution_id"], "running", pid=1000 + a["execution_id"]))
    return held


def finish(client, wid, a, rc=0, **fields):
    acked(client, wid, rep(a["execution_id"], "succeeded" if rc == 0 else "failed",
                           return_code=rc, **fields))


def status(client, tid):
    return task(client, tid)["status"]


# --- retries -------------------------------------------------------------------

def test_a_flaky_task_is_retried_and_keeps_every_attempt(app, client):
    tid = add(client, command="flaky", retries=3)["id"]
    wid = register(client, "w", concurrency=1)
    for attempt in (1, 2):
        (a,) = start(app, client, wid)
        finish(client, wid, a, rc=1)
        t = task(client, tid)
        assert (t["status"], t["attempt"]) == ("pending", attempt)
        assert t["reason"] == f"attempt {attempt} failed: exit code 1"
    (a,) = start(app, client, wid)
    finish(client, wid, a)
    t = task(client, tid)
    assert (t["status"], t["attempt"], t["reason"]) == ("succeeded", 3, None)
    assert [e["status"] for e in t["executions"]] == ["failed", "failed", "succeeded"]
    assert [e["reason"] for e in t["executions"]] == ["exit_code", "exit_code", None]


def test_retries_run_out_and_the_delay_grows(app, client):
    tid = add(client, command="bad", retries=2, retry_delay=0.4, retry_backoff=2)["id"]
    wid = register(client, "w", concurrency=1)
    (a,) = start(app, client, wid)
    finish(client, wid, a, rc=2)
    assert status(client, tid) == "pending"
    assert dispatch(app) == {}                     # not before its delay
    time.sleep(0.45)
    (a,) = start(app, client, wid)
    finish(client, wid, a, rc=2)
    time.sleep(0.45)
    assert dispatch(app) == {}                     # the second delay is 0.8 s
    time.sleep(0.4)
    (a,) = start(app, client, wid)
    finish(client, wid, a, rc=2, reason="timeout", error="timeout: still running after 1s")
    t = task(client, tid)
    assert (t["status"], t["attempt"]) == ("failed", 3)
    assert t["reason"] == "timeout: still running after 1s"
    assert t["executions"][-1]["reason"] == "timeout"


# --- dependencies ----------------------------------------------------------------

def diamond(client, batch="dag"):
    return bulk(client, [
        {"ref": "a", "command": "root"},
        {"ref": "b", "command": "left", "depends_on": ["a"]},
        {"ref": "c", "command": "right", "depends_on": ["a"]},
        {"ref": "d", "command": "join", "depends_on": ["b", "c"]},
    ], batch=batch)["ids"]


def test_a_diamond_runs_in_dependency_order(app, client):
    a, b, c, d = diamond(client)
    assert [status(client, t) for t in (a, b, c, d)] == ["pending", "waiting", "waiting", "waiting"]
    assert task(client, d)["depends_on"] == [b, c]
    wid = register(client, "w", concurrency=4)
    order = []
    while True:
        held = start(app, client, wid)
        if not held:
            break
        order.append(sorted(x["task_id"] for x in held))
        for x in held:
            finish(client, wid, x)
    assert order == [[a], [b, c], [d]]
    assert all(status(client, t) == "succeeded" for t in (a, b, c, d))


def test_a_root_releases_its_many_dependents_at_once(app, client):
    """A fan-out: the root's end makes its 300 dependents pending in the same request, each
    with its task.ready event, but not the one that also waits for another task. The same
    through lifecycle.Moves, with the dependent held by the session (refreshed after)."""
    from apicalls import events, last_event

    from scitq.server import lifecycle
    from scitq.server.models import Task
    ids = bulk(client, [{"ref": "root", "command": "index"}, {"ref": "other", "command": "other"}]
               + [{"command": f"align {i}", "depends_on": ["root"]} for i in range(300)]
               + [{"command": "merge", "depends_on": ["root", "other"]}], batch="fan")["ids"]
    root, other, fanned, merge = ids[0], ids[1], ids[2:-1], ids[-1]
    wid = register(client, "w", concurrency=1)
    mark = last_event(app)
    (x,) = start(app, client, wid)
    assert x["task_id"] == root
    finish(client, wid, x)
    counts = call(client, "GET", "/batches/fan")["counts"]
    assert (counts["pending"], counts["waiting"]) == (301, 1)           # 300 and `other`
    ready = [oid for kind, _, oid, _ in events(app, mark) if kind == "task.ready"]
    assert ready == fanned and status(client, merge) == "waiting"

    db = app.extensions["scitq"].db
    with db.write() as s:
        held = s.get(Task, merge)                   # held by the session: refreshed after
        moves = lifecycle.Moves()
        moves.succeed(other)
        moves.write(s)
        assert held.status == "pending"
    assert status(client, merge) == "pending"
    assert [oid for kind, _, oid, _ in events(app, mark) if kind == "task.ready"][-1] == merge


def test_a_failed_root_cancels_the_rest_and_force_runs_one(app, client):
    a, b, c, d = diamond(client)
    wid = register(client, "w", concurrency=4)
    (x,) = start(app, client, wid)
    finish(client, wid, x, rc=1)
    for t in (b, c, d):
        assert status(client, t) == "canceled"
    assert task(client, b)["reason"] == f"dependency {a} failed"
    assert task(client, d)["reason"].startswith("dependency ")
    assert call(client, "GET", "/batches/dag")["counts"]["remaining"] == 0

    assert call(client, "POST", f"/tasks/{b}/force")["status"] == "pending"
    (x,) = start(app, client, wid)
    assert x["task_id"] == b
    finish(client, wid, x)
    assert status(client, b) == "succeeded" and status(client, d) == "canceled"

    # Relaunching the root revives what its failure canceled.
    call(client, "POST", f"/tasks/{a}/relaunch")
    assert [status(client, t) for t in (a, c, d)] == ["pending", "waiting", "waiting"]
    call(client, "POST", f"/tasks/{a}/force", 409)      # pending: nothing to force


def test_the_cancel_cascade_and_its_revival_are_exact(app, client):
    """A root failed for good cancels what waits for it, directly or not (a chain and a
    diamond), with one event each and nothing else; its relaunch brings exactly those back to
    waiting, one event each; a dependent that also waits for another unfinished task stays
    waiting while the rest runs."""
    from apicalls import events, last_event
    busy = register(client, "busy", concurrency=1, prefetch=0)
    (other,) = bulk(client, [{"command": "other"}], batch="side")["ids"]
    (running,) = start(app, client, busy)             # `other` stays unfinished till the end
    a, b, c, d, e, f, g = bulk(client, [
        {"ref": "a", "command": "root"},
        {"ref": "b", "command": "left", "depends_on": ["a"]},
        {"ref": "c", "command": "right", "depends_on": ["a"]},
        {"ref": "d", "command": "join", "depends_on": ["b", "c"]},
        {"ref": "e", "command": "after", "depends_on": ["d"]},
        {"ref": "f", "command": "both", "depends_on": ["d", other]},
        {"ref": "g", "command": "aside", "depends_on": [other]},
    ], batch="dag")["ids"]
    below = [b, c, d, e, f]
    wid = register(client, "w", concurrency=4, prefetch=0)
    mark = last_event(app)
    (x,) = start(app, client, wid)
    assert x["task_id"] == a
    finish(client, wid, x, rc=1)
    assert [status(client, t) for t in below] == ["canceled"] * 5
    assert [status(client, t) for t in (g, other)] == ["waiting", "running"]
    assert {task(client, t)["reason"] for t in below} == {f"dependency {a} failed"}
    assert sorted((oid, detail) for kind, _, oid, detail in events(app, mark) if kind == "task.canceled") \
        == [(t, {"reason": f"dependency {a} failed"}) for t in below]

    mark = last_event(app)
    call(client, "POST", f"/tasks/{a}/relaunch")
    assert [status(client, t) for t in [a, *below, g]] == ["pending"] + ["waiting"] * 6
    assert {task(client, t)["reason"] for t in below} == {None}
    assert sorted(oid for kind, _, oid, _ in events(app, mark) if kind == "task.waiting") == below
    order = []
    while held := start(app, client, wid):
        order.append(sorted(h["task_id"] for h in held))
        for h in held:
            finish(client, wid, h)
    assert order == [[a], [b, c], [d], [e]]
    assert [status(client, t) for t in (f, g)] == ["waiting", "waiting"]
    finish(client, busy, running)
    assert [status(client, t) for t in (f, g)] == ["pending", "pending"]


def test_dependencies_on_stored_tasks(app, client):
    wid = register(client, "w", concurrency=2)
    done = add(client, command="first")["id"]
    (x,) = start(app, client, wid)
    finish(client, wid, x)
    failed = add(client, command="second")["id"]
    (x,) = start(app, client, wid)
    finish(client, wid, x, rc=1)
    assert add(client, depends_on=[done])["status"] == "pending"
    t = add(client, depends_on=[done, failed])
    assert t["status"] == "canceled" and t["reason"] == f"dependency {failed} failed or was canceled"


@pytest.mark.parametrize("tasks, message", [
    ([{"command": "x", "depends_on": [999999]}], "no task 999999"),
    ([{"command": "x", "depends_on": ["nope"]}], "no task with ref 'nope'"),
    ([{"command": "x", "ref": "a", "depends_on": ["a"]}], "cannot depend on itself"),
    ([{"command": "x", "ref": "a", "depends_on": ["b"]},
      {"command": "y", "ref": "b", "depends_on": ["c"]},
      {"command": "z", "ref": "c", "depends_on": ["a"]}], "a cycle"),
    ([{"command": "x", "ref": "a"}, {"command": "y", "ref": "a"}], "used twice"),
    ([{"command": "x", "depends_on": [True]}], "depends_on"),
    ([{"command": "x", "depends_on": [1.5]}], "depends_on"),
])
def test_bad_dependencies_are_refused_and_nothing_is_stored(app, client, tasks, message):
    body = bulk(client, tasks, expect=400)
    assert message in body["error"] + str(body.get("detail"))
    assert call(client, "GET", "/tasks")["items"] == []


def test_an_edit_cannot_make_a_cycle(app, client):
    a, b, c, d = diamond(client)
    body = call(client, "PUT", f"/tasks/{a}", 400, json={"depends_on": [d]})
    assert "cycle" in body["error"]
    assert task(client, a)["depends_on"] == []
    assert call(client, "PUT", f"/tasks/{d}", json={"depends_on": [a]})["status"] == "waiting"
    assert task(client, d)["depends_on"] == [a]


# --- signals --------------------------------------------------------------------

def test_kill_a_running_task_fails_it_without_retry(app, client):
    tid = add(client, command="sleep 100", retries=3)["id"]
    wid = register(client, "w", concurrency=1)
    (a,) = start(app, client, wid)
    call(client, "POST", f"/tasks/{tid}/kill")
    answer = poll(client, wid, known=[a["execution_id"]])
    assert answer["signals"] == [{"execution_id": a["execution_id"], "signal": "kill", "seq": 1}]
    # Once the worker says it applied it, a poll no longer returns early for it.
    started = time.monotonic()
    poll(client, wid, wait=0.3, known=[a["execution_id"]], signaled=[[a["execution_id"], 1]])
    assert time.monotonic() - started >= 0.25
    acked(client, wid, rep(a["execution_id"], "signaled", signal="kill", seq=1),
          rep(a["execution_id"], "failed", return_code=-9, reason="killed"))
    t = task(client, tid)
    assert (t["status"], t["reason"]) == ("failed", "killed by user")
    assert dispatch(app) == {}


def test_kill_before_the_start_cancels_and_pause_needs_a_running_task(app, client):
    tid = add(client, command="x")["id"]
    call(client, "POST", f"/tasks/{tid}/pause", 409)
    assert call(client, "POST", f"/tasks/{tid}/kill")["status"] == "canceled"
    call(client, "POST", f"/tasks/{tid}/kill", 409)


def test_pause_and_resume_reach_the_worker_and_come_back(app, client):
    tid = add(client, command="sleep 100")["id"]
    wid = register(client, "w", concurrency=1)
    (a,) = start(app, client, wid)
    eid = a["execution_id"]
    call(client, "POST", f"/tasks/{tid}/pause")
    (sig,) = poll(client, wid, known=[eid])["signals"]
    assert sig == {"execution_id": eid, "signal": "pause", "seq": 1}
    acked(client, wid, rep(eid, "signaled", signal="pause", seq=1))
    ex = task(client, tid)["executions"][0]
    assert ex["paused"] is True
    assert poll(client, wid, known=[eid])["signals"] == []
    call(client, "POST", f"/tasks/{tid}/resume")
    (sig,) = poll(client, wid, known=[eid])["signals"]
    assert sig["signal"] == "resume" and sig["seq"] == 2
    acked(client, wid, rep(eid, "signaled", signal="resume", seq=2))
    assert task(client, tid)["executions"][0]["paused"] is False


@pytest.mark.parametrize("requeue", [True, False])
def test_stop_a_batch(app, client, requeue):
    ids = submit(client, "a", "b", "c", batch="stopme")
    wid = register(client, "w", concurrency=2)
    held = start(app, client, wid)
    assert len(held) == 2
    b = call(client, "POST", "/batches/stopme/stop", query_string={"requeue": str(requeue).lower()})
    assert b["status"] == "paused"
    signals = poll(client, wid, known=[a["execution_id"] for a in held])["signals"]
    assert sorted(s["signal"] for s in signals) == ["requeue" if requeue else "kill"] * 2
    for a in held:
        acked(client, wid, rep(a["execution_id"], "failed", return_code=-9, reason="killed"))
    stopped = [task(client, a["task_id"]) for a in held]
    if requeue:
        assert [(t["status"], t["attempt"]) for t in stopped] == [("pending", 0)] * 2
    else:
        assert [t["status"] for t in stopped] == ["failed"] * 2
    assert status(client, ids[2]) == "pending"
    assert dispatch(app) == {}                      # the batch is paused
    call(client, "POST", "/batches/stopme/resume")
    assert dispatch(app) == {wid: 2 if requeue else 1}


def test_pause_a_batch_with_its_running_tasks(app, client):
    submit(client, "a", "b", batch="susp")
    wid = register(client, "w", concurrency=2)
    held = start(app, client, wid)
    call(client, "POST", "/batches/susp/pause", query_string={"running": "true"})
    known = [a["execution_id"] for a in held]
    assert {s["signal"] for s in poll(client, wid, known=known)["signals"]} == {"pause"}
    for a in held:
        acked(client, wid, rep(a["execution_id"], "signaled", signal="pause", seq=1))
    call(client, "POST", "/batches/susp/resume")
    assert {s["signal"] for s in poll(client, wid, known=known)["signals"]} == {"resume"}


def test_a_lost_worker_does_not_bring_back_a_killed_task(app, client):
    tid = add(client, command="sleep 100", retries=2)["id"]
    wid = register(client, "w", concurrency=1)
    start(app, client, wid)
    call(client, "POST", f"/tasks/{tid}/kill")
    time.sleep(LEASE + 0.1)
    assert sweep(app) == 1
    t = task(client, tid)
    assert t["status"] == "failed" and "killed" in t["reason"]
    assert t["executions"][0]["status"] == "lost"


# --- batch cap --------------------------------------------------------------------

def test_a_batch_cap_holds_over_all_workers(app, client):
    call(client, "POST", "/batches", 201, json={"name": "capped", "concurrency": 2})
    submit(client, *[f"c{i}" for i in range(5)], batch="capped")
    free = submit(client, "f1", "f2", batch="free")
    w1 = register(client, "w1", concurrency=3)
    w2 = register(client, "w2", concurrency=3)
    dispatch(app)
    held = poll(client, w1)["assignments"] + poll(client, w2)["assignments"]
    assert sorted(a["batch"] for a in held) == ["capped", "capped", "free", "free"]
    assert {a["task_id"] for a in held} >= set(free)
    b = call(client, "PUT", "/batches/capped", json={"concurrency": 3})
    assert b["concurrency"] == 3
    assert sum(dispatch(app).values()) == 1
    call(client, "PUT", "/batches/capped", 400, json={"concurrency": 0})
    assert call(client, "PUT", "/batches/capped", json={"concurrency": None})["concurrency"] is None
    assert sum(dispatch(app).values()) == 1         # 6 slots, all held now


# --- the cache --------------------------------------------------------------------

def test_the_cache_reuses_a_succeeded_execution(app, client):
    key = {"inputs": [{"path": "reads.fq", "sha256": "ab" * 32}]}
    first = add(client, command="expensive", use_cache=True)["id"]
    wid = register(client, "w", concurrency=1)
    (a,) = start(app, client, wid)
    assert call(client, "POST", f"/executions/{a['execution_id']}/cache", json=key) == {"hit": None}
    finish(client, wid, a, stdout=chunk(b"42\n"))
    second = add(client, command="expensive", use_cache=True, output="file:///tmp/out2/")["id"]
    (b,) = start(app, client, wid)
    hit = call(client, "POST", f"/executions/{b['execution_id']}/cache", json=key)["hit"]
    assert hit == {"execution_id": a["execution_id"], "task_id": first, "output": None}
    finish(client, wid, b, cached_from=a["execution_id"])
    t = task(client, second)
    assert t["status"] == "succeeded"
    assert t["executions"][0]["reason"] == "cached"
    assert t["executions"][0]["cached_from"] == a["execution_id"]
    assert output(client, second).get_data() == b"42\n"
    # Without use_cache, the key is stored but nothing is reused.
    add(client, command="expensive")
    (c,) = start(app, client, wid)
    assert call(client, "POST", f"/executions/{c['execution_id']}/cache", json=key) == {"hit": None}
    call(client, "POST", f"/executions/{c['execution_id']}/cache", 400,
         json={"inputs": [{"path": "a", "sha256": "nothex"}]})
    call(client, "POST", f"/executions/{c['execution_id']}/cache", 400,
         json={"inputs": [{"path": "a", "sha256": "ab" * 32}, {"path": "a", "sha256": "cd" * 32}]})
    refused = send(client, wid, rep(c["execution_id"], "succeeded", return_code=0, cached_from=c["execution_id"]))
    assert refused["refused"] and refused["refused"][0]["status"] == 400


# --- validation -------------------------------------------------------------------

@pytest.mark.parametrize("spec, message", [
    ({"retries": -1}, "retries"),
    ({"retries": 1000}, "retries"),
    ({"retry_delay": -1}, "retry_delay"),
    ({"retry_backoff": 0.5}, "retry_backoff"),
    ({"timeout": 0}, "timeout"),
    ({"container_options": "-e A=1"}, "need a 'container'"),
    ({"use_cache": "yes"}, "use_cache"),
    ({"container": "x" * 600}, "container"),
])
def test_bad_task_options_are_refused(app, client, spec, message):
    body = add(client, expect=400, **spec)
    assert message in (body["error"] + str(body.get("detail")))
    assert call(client, "GET", "/tasks")["items"] == []


def test_options_are_stored_and_handed_to_the_worker(app, client):
    t = add(client, command="c", retries=2, retry_delay=1.5, timeout=30, staging_timeout=60,
            container="busybox", container_options="-e A=1", inputs=["s3://b/k|gunzip"],
            resources=["file:///ref/genome.tgz|untar"], output="s3://b/out/", use_cache=True)
    for key, value in {"retries": 2, "retry_delay": 1.5, "timeout": 30.0, "container": "busybox",
                       "inputs": ["s3://b/k|gunzip"], "output": "s3://b/out/", "use_cache": True}.items():
        assert t[key] == value
    wid = register(client, "w")
    dispatch(app)
    (a,) = poll(client, wid)["assignments"]
    assert a["inputs"] == ["s3://b/k|gunzip"] and a["resources"] == ["file:///ref/genome.tgz|untar"]
    assert (a["timeout"], a["staging_timeout"], a["container_options"]) == (30.0, 60.0, "-e A=1")
