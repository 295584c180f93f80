"""The REST API through Flask's test client, on SQLite and on PostgreSQL.

The dispatcher thread is not started: tests call `dispatcher.dispatch()` themselves, so
every assignment happens exactly where the test says.
"""
import base64

import pytest


API = "/api/v1"
BIG_COMMAND = "x" * (10 << 20)      # 10 MB: far past the 64 KiB command limit
SMALL_ANSWER = 2048                 # bytes: an error answer never echoes the payload back


# --- helpers -----------------------------------------------------------------

def call(client, method, path, expect=200, **kwargs):
    """The JSON answer of a request that must answer `expect`."""
    r = client.open(API + path, method=method, **kwargs)
    assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.get_data()[:500]!r}"
    return r.get_json()


def submit(client, command="true", **fields):
    return call(client, "POST", "/tasks", 201, json={"command": command, **fields})


def submit_many(client, commands, batch=None):
    body = {"tasks": [{"command": c} for c in commands]}
    if batch:
        body["batch"] = batch
    return call(client, "POST", "/tasks/bulk", 201, json=body)["ids"]


def get_task(client, task_id):
    return call(client, "GET", f"/tasks/{task_id}")


def task_ids(client, **params):
    """Ids of the first page of tasks matching the filters."""
    return [t["id"] for t in call(client, "GET", "/tasks", query_string=params)["items"]]


def all_tasks(client, **params):
    """Every task, walking the cursor from page to page."""
    items, after = [], None
    while True:
        query = dict(params, **({"after": after} if after is not None else {}))
        page = call(client, "GET", "/tasks", query_string=query)
        items += page["items"]
        after = page["next"]
        if after is None:
            return items


def batch_of(client, ref):
    return call(client, "GET", f"/batches/{ref}")


def register(client, name="w1", **settings):
    return call(client, "POST", "/workers", 201, json={"name": name, **settings})


def dispatch(app):
    return app.extensions["scitq"].dispatcher.dispatch()


def assign(app, client, worker_id):
    """Dispatch, then the worker's new assignments as its poll returns them."""
    dispatch(app)
    return call(client, "POST", f"/workers/{worker_id}/poll", json={"wait": 0})["assignments"]


def report(client, worker_id, execution_id, status, **fields):
    answer = call(client, "POST", f"/workers/{worker_id}/reports",
                  json={"reports": [{"execution_id": execution_id, "status": status, **fields}]})
    assert answer["acked"] == [execution_id], answer
    return answer


def finish(client, worker_id, execution_id, return_code=0):
    status = "succeeded" if return_code == 0 else "failed"
    report(client, worker_id, execution_id, status, return_code=return_code)


def run_one(app, client, command="true", return_code=0, stdout=None, worker="w1"):
    """Submit a task and run it to its end on a worker; returns (task id, worker id)."""
    task_id = submit(client, command)["id"]
    wid = register(client, worker)["id"]
    (a,) = assign(app, client, wid)
    assert a["task_id"] == task_id
    report(client, wid, a["execution_id"], "running", pid=1234)
    output = {"stdout": {"offset": 0, "data": base64.b64encode(stdout).decode()}} if stdout else {}
    report(client, wid, a["execution_id"], "succeeded" if return_code == 0 else "failed",
           return_code=return_code, **output)
    return task_id, wid


def snapshot(client):
    """Everything stored about tasks and batches, to compare before and after a request."""
    return all_tasks(client, limit=1000), call(client, "GET", "/batches")


def assert_error(r, status):
    """A clean error answer: the expected 4xx, a small JSON body with an "error" string."""
    assert r.status_code == status, f"{r.status_code} {r.get_data()[:500]!r}"
    assert r.is_json, r.get_data()[:500]
    assert isinstance(r.get_json().get("error"), str) and r.get_json()["error"]
    assert len(r.get_data()) < SMALL_ANSWER, f"{len(r.get_data())} bytes of error answer"


# --- creating tasks ----------------------------------------------------------

def test_create_one_task(client):
    t = submit(client, "echo hello", name="greet", shell=False)
    assert t["id"] > 0
    assert (t["command"], t["name"], t["shell"]) == ("echo hello", "greet", False)
    assert (t["batch"], t["status"], t["attempt"]) == ("default", "pending", 0)
    shown = get_task(client, t["id"])
    assert {k: shown[k] for k in t} == t
    assert shown["executions"] == []


def test_bulk_tasks_keep_order_and_create_batches(client):
    ids = submit_many(client, [f"echo {i}" for i in range(30)])
    assert len(ids) == 30 and ids == sorted(set(ids))
    listed = all_tasks(client)
    assert [t["id"] for t in listed] == ids
    assert [t["command"] for t in listed] == [f"echo {i}" for i in range(30)]
    assert {t["batch"] for t in listed} == {"default"}

    answer = call(client, "POST", "/tasks/bulk", 201, json={"batch": "fresh", "tasks": [
        {"command": "a"}, {"command": "b", "batch": "other"}, {"command": "c"}]})
    assert answer["count"] == 3 and answer["ids"][0] > ids[-1]
    assert [get_task(client, i)["batch"] for i in answer["ids"]] == ["fresh", "other", "fresh"]
    assert batch_of(client, "fresh")["counts"]["total"] == 2
    assert batch_of(client, "other")["counts"]["total"] == 1


def test_bulk_is_all_or_nothing(client):
    submit(client, "kept")
    before = snapshot(client)
    r = client.post(f"{API}/tasks/bulk", json={"tasks": [
        {"command": "ok", "batch": "new-one"}, {"command": "   "}]})
    assert_error(r, 400)
    assert "#1" in r.get_json()["error"]
    assert snapshot(client) == before
    assert_error(client.get(f"{API}/batches/new-one"), 404)


# --- batches -----------------------------------------------------------------

def test_batch_counts_per_status(app, client):
    submit_many(client, ["t1", "t2", "t3", "t4", "t5"], batch="b")
    wid = register(client, concurrency=4)["id"]
    e1, e2, e3, _e4 = (a["execution_id"] for a in assign(app, client, wid))
    report(client, wid, e1, "running")
    finish(client, wid, e2)
    finish(client, wid, e3, return_code=1)

    expected = {"waiting": 0, "pending": 1, "assigned": 1, "running": 1, "succeeded": 1,
                "failed": 1, "canceled": 0, "remaining": 3, "total": 5}
    by_name = batch_of(client, "b")
    assert by_name["counts"] == expected
    assert batch_of(client, by_name["id"]) == by_name
    (listed,) = [b for b in call(client, "GET", "/batches") if b["name"] == "b"]
    assert listed == by_name


def test_empty_batch_and_duplicate(client):
    b = call(client, "POST", "/batches", 201, json={"name": "empty"})
    assert b["status"] == "active"
    assert b["counts"]["total"] == 0 and b["counts"]["remaining"] == 0
    assert_error(client.post(f"{API}/batches", json={"name": "empty"}), 409)


# --- listing tasks -----------------------------------------------------------

def test_task_list_filters(app, client):
    a_ids = [submit(client, "x", name=f"sample-{i}", batch="A")["id"] for i in range(3)]
    b_ids = [submit(client, "x", name=f"control-{i}", batch="B")["id"] for i in range(3)]
    wid = register(client, concurrency=2)["id"]
    first, second = assign(app, client, wid)        # the two oldest: a_ids[0], a_ids[1]
    finish(client, wid, first["execution_id"], return_code=2)
    report(client, wid, second["execution_id"], "running")

    assert task_ids(client, batch="A") == a_ids
    assert task_ids(client, batch=batch_of(client, "B")["id"]) == b_ids
    assert task_ids(client, status="failed") == [a_ids[0]]
    assert task_ids(client, status="running,failed") == a_ids[:2]
    assert task_ids(client, status="pending", batch="A") == [a_ids[2]]
    assert task_ids(client, name="sample-*") == a_ids
    assert task_ids(client, name="*-1") == [a_ids[1], b_ids[1]]
    assert task_ids(client, name="control-2") == [b_ids[2]]
    assert task_ids(client, name="nothing*") == []


def test_cursor_pagination_gives_each_task_once(client):
    ids = submit_many(client, [f"echo {i}" for i in range(25)])
    pages, after = [], None
    while True:
        query = {"limit": 10, **({"after": after} if after is not None else {})}
        page = call(client, "GET", "/tasks", query_string=query)
        pages.append([t["id"] for t in page["items"]])
        after = page["next"]
        if after is None:
            break
        assert after == pages[-1][-1]
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [i for p in pages for i in p] == ids


# --- one task: show, edit, relaunch, delete ----------------------------------

def test_show_task_includes_executions(app, client):
    task_id, wid = run_one(app, client, "make", return_code=0)
    t = get_task(client, task_id)
    assert (t["status"], t["attempt"]) == ("succeeded", 1)
    (ex,) = t["executions"]
    assert (ex["task_id"], ex["worker_id"], ex["worker"]) == (task_id, wid, "w1")
    assert (ex["status"], ex["return_code"], ex["pid"]) == ("succeeded", 0, 1234)
    assert ex["started_at"] and ex["ended_at"]


def test_update_finished_task(app, client):
    task_id, _ = run_one(app, client, "old command")
    t = call(client, "PUT", f"/tasks/{task_id}", json={"command": "new command", "name": "renamed"})
    assert (t["command"], t["name"], t["status"]) == ("new command", "renamed", "succeeded")
    shown = get_task(client, task_id)
    assert (shown["command"], shown["name"]) == ("new command", "renamed")
    assert len(shown["executions"]) == 1
    assert_error(client.put(f"{API}/tasks/{task_id}", json={"batch": "elsewhere"}), 400)
    assert get_task(client, task_id)["batch"] == "default"


def test_relaunch_keeps_history(app, client):
    task_id, wid = run_one(app, client, "flaky", return_code=3)
    assert get_task(client, task_id)["status"] == "failed"
    t = call(client, "POST", f"/tasks/{task_id}/relaunch")
    assert t["status"] == "pending"
    assert_error(client.post(f"{API}/tasks/{task_id}/relaunch"), 409)    # already pending

    (a,) = assign(app, client, wid)
    assert (a["task_id"], a["attempt"]) == (task_id, 2)
    finish(client, wid, a["execution_id"])
    t = get_task(client, task_id)
    assert t["status"] == "succeeded"
    assert [(e["status"], e["return_code"]) for e in t["executions"]] == [("failed", 3), ("succeeded", 0)]


@pytest.mark.parametrize("state", ["assigned", "running"])
def test_active_task_refuses_changes(app, client, state):
    task_id = submit(client, "long")["id"]
    wid = register(client)["id"]
    (a,) = assign(app, client, wid)
    if state == "running":
        report(client, wid, a["execution_id"], "running")
    before = get_task(client, task_id)
    assert before["status"] == state
    for method, path, body in [("POST", f"/tasks/{task_id}/relaunch", None),
                               ("PUT", f"/tasks/{task_id}", {"command": "other"}),
                               ("DELETE", f"/tasks/{task_id}", None)]:
        assert_error(client.open(API + path, method=method, json=body), 409)
    assert get_task(client, task_id) == before


def test_delete_task(app, client, tmp_path):
    task_id, wid = run_one(app, client, stdout=b"some output")    # its output came with its end
    ex_id = get_task(client, task_id)["executions"][0]["id"]
    outputs = app.extensions["scitq"].outputs
    assert outputs.path(ex_id, "stdout").exists()
    other = submit(client, "stays")["id"]

    assert call(client, "DELETE", f"/tasks/{task_id}") == {"deleted": task_id}
    assert_error(client.get(f"{API}/tasks/{task_id}"), 404)
    assert_error(client.get(f"{API}/executions/{ex_id}"), 404)
    assert not outputs.path(ex_id, "stdout").exists()
    assert [t["id"] for t in all_tasks(client)] == [other]
    assert_error(client.delete(f"{API}/tasks/{task_id}"), 404)


# --- pausing and deleting batches --------------------------------------------

def test_paused_batch_is_not_dispatched(app, client):
    held = submit_many(client, ["h1", "h2"], batch="held")
    free = submit_many(client, ["f1"], batch="free")
    paused = call(client, "POST", "/batches/held/pause")
    assert paused["status"] == "paused"
    wid = register(client, concurrency=5)["id"]

    assert [a["task_id"] for a in assign(app, client, wid)] == free
    assert dispatch(app) == {}
    assert [t["status"] for t in all_tasks(client, batch="held")] == ["pending", "pending"]

    assert call(client, "POST", "/batches/held/resume")["status"] == "active"
    assert dispatch(app) == {wid: 2}
    assert [t["status"] for t in all_tasks(client, batch="held")] == ["assigned", "assigned"]
    assert task_ids(client, status="assigned") == held + free


def test_delete_batch(app, client):
    doomed = submit_many(client, ["d1", "d2"], batch="doomed")
    kept = submit_many(client, ["k1"], batch="kept")
    wid = register(client)["id"]
    (a,) = assign(app, client, wid)
    report(client, wid, a["execution_id"], "running")

    assert_error(client.delete(f"{API}/batches/doomed"), 409)
    assert [t["id"] for t in all_tasks(client)] == doomed + kept

    finish(client, wid, a["execution_id"])
    batch_id = batch_of(client, "doomed")["id"]
    assert call(client, "DELETE", f"/batches/{batch_id}") == {"deleted": str(batch_id)}
    assert_error(client.get(f"{API}/batches/doomed"), 404)
    assert_error(client.get(f"{API}/executions/{a['execution_id']}"), 404)
    assert [t["id"] for t in all_tasks(client)] == kept


# --- workers -----------------------------------------------------------------

def test_worker_register_list_show(client):
    w = register(client, "node-1", hostname="node-1.lab", concurrency=4, prefetch=2, cpus=8,
                 version="0.1", batch="only-this")
    assert (w["status"], w["concurrency"], w["prefetch"], w["cpus"]) == ("running", 4, 2, 8)
    assert (w["batch"], w["running"], w["hostname"]) == ("only-this", 0, "node-1.lab")
    assert batch_of(client, "only-this")["counts"]["total"] == 0     # created on the fly
    plain = register(client, "node-2")
    # no prefetch given: the worker sizes it (null), from depth 0 until it says otherwise
    assert (plain["concurrency"], plain["prefetch"], plain["depth"], plain["batch"]) == (1, None, 0, None)

    assert [x["name"] for x in call(client, "GET", "/workers")] == ["node-1", "node-2"]
    assert call(client, "GET", f"/workers/{w['id']}") == call(client, "GET", "/workers/node-1")
    assert call(client, "GET", "/workers/node-1")["id"] == w["id"]


def test_worker_settings(app, client):
    w = register(client)
    changed = call(client, "PUT", "/workers/w1",
                   json={"concurrency": 3, "prefetch": 1, "batch": "mine", "status": "paused"})
    assert (changed["concurrency"], changed["prefetch"]) == (3, 1)
    assert (changed["batch"], changed["status"]) == ("mine", "paused")
    assert call(client, "GET", f"/workers/{w['id']}") == changed

    submit(client, "x", batch="other")
    mine = submit(client, "x", batch="mine")["id"]
    assert dispatch(app) == {}                                  # a paused worker takes nothing
    call(client, "PUT", f"/workers/{w['id']}", json={"status": "running"})
    assert [a["task_id"] for a in assign(app, client, w["id"])] == [mine]
    assert_error(client.put(f"{API}/workers/w1", json={"concurrency": 0}), 400)
    assert_error(client.put(f"{API}/workers/w1", json={"status": "lost"}), 400)
    assert call(client, "GET", "/workers/w1")["concurrency"] == 3


def test_worker_batch_can_be_cleared(app, client):
    wid = register(client, batch="mine")["id"]
    other = submit(client, "x", batch="other")["id"]
    assert call(client, "PUT", "/workers/w1", json={"batch": None})["batch"] is None
    assert [a["task_id"] for a in assign(app, client, wid)] == [other]


def test_delete_worker_gives_tasks_back(app, client):
    ids = submit_many(client, ["a", "b"])
    wid = register(client, concurrency=2)["id"]
    first, _second = assign(app, client, wid)
    report(client, wid, first["execution_id"], "running")
    assert call(client, "GET", f"/workers/{wid}")["running"] == 2
    assert [w["running"] for w in call(client, "GET", "/workers")] == [2]

    assert call(client, "DELETE", "/workers/w1") == {"deleted": wid, "given_back": 2}
    assert_error(client.get(f"{API}/workers/{wid}"), 404)
    assert call(client, "GET", "/workers") == []
    for task_id in ids:
        t = get_task(client, task_id)
        assert (t["status"], t["attempt"]) == ("pending", 0)
        (ex,) = t["executions"]
        assert (ex["status"], ex["worker_id"], ex["worker"]) == ("lost", None, "w1")


# --- the API's own description, unknown URLs ---------------------------------

def test_swagger_is_served(client):
    spec = call(client, "GET", "/swagger.json")
    assert "/tasks" in spec["paths"] and "/workers/{worker_id}/poll" in spec["paths"]
    docs = client.get("/api/v1/docs")               # browsable, with its own assets
    assert docs.status_code == 200 and b"swagger-ui" in docs.data
    assert client.get("/swaggerui/swagger-ui.css").status_code == 200


@pytest.mark.parametrize("url", ["/api/v1/nowhere", "/nowhere", "/api/v1/tasks/abc"])
def test_unknown_url_is_json_404(client, url):
    assert_error(client.get(url), 404)


# --- bad input: a clean 4xx, nothing stored changes --------------------------

def raw(text):
    return {"data": text, "content_type": "application/json"}


BAD_REQUESTS = [
    # malformed JSON
    ("bad-json", "POST", "/tasks", raw('{"command": "x"'), 400),
    ("not-json", "POST", "/tasks", {"data": "command=x"}, 400),
    ("json-null", "POST", "/tasks", raw("null"), 400),
    ("json-list", "POST", "/tasks/bulk", raw('[{"command": "x"}]'), 400),
    ("bad-json-worker", "POST", "/workers", raw("{name: w}"), 400),
    # missing fields
    ("no-command", "POST", "/tasks", {"json": {"name": "x"}}, 400),
    ("no-tasks", "POST", "/tasks/bulk", {"json": {"batch": "b"}}, 400),
    ("empty-bulk", "POST", "/tasks/bulk", {"json": {"tasks": []}}, 400),
    ("bulk-no-command", "POST", "/tasks/bulk", {"json": {"tasks": [{"command": "x"}, {}]}}, 400),
    ("no-worker-name", "POST", "/workers", {"json": {"concurrency": 2}}, 400),
    ("no-batch-name", "POST", "/batches", {"json": {}}, 400),
    ("report-no-id", "POST", "/workers/1/reports", {"json": {"reports": [{"status": "running"}]}}, 400),
    # wrong types
    ("command-int", "POST", "/tasks", {"json": {"command": 5}}, 400),
    ("command-blank", "POST", "/tasks", {"json": {"command": "  "}}, 400),
    ("shell-string", "POST", "/tasks", {"json": {"command": "x", "shell": "yes"}}, 400),
    ("tasks-string", "POST", "/tasks/bulk", {"json": {"tasks": "x"}}, 400),
    ("put-command-list", "PUT", "/tasks/1", {"json": {"command": ["x"]}}, 400),
    ("concurrency-string", "POST", "/workers", {"json": {"name": "w9", "concurrency": "2"}}, 400),
    ("concurrency-zero", "PUT", "/workers/1", {"json": {"concurrency": 0}}, 400),
    ("poll-wait-string", "POST", "/workers/1/poll", {"json": {"wait": "soon"}}, 400),
    ("report-bad-status", "POST", "/workers/1/reports",
     {"json": {"reports": [{"execution_id": 1, "status": "done"}]}}, 400),
    # unknown ids
    ("get-task", "GET", "/tasks/999999", {}, 404),
    ("put-task", "PUT", "/tasks/999999", {"json": {"command": "x"}}, 404),
    ("delete-task", "DELETE", "/tasks/999999", {}, 404),
    ("relaunch-task", "POST", "/tasks/999999/relaunch", {}, 404),
    ("task-output", "GET", "/tasks/999999/output", {}, 404),
    ("never-ran-output", "GET", "/tasks/3/output", {}, 404),
    ("get-batch-id", "GET", "/batches/999999", {}, 404),
    ("get-batch-name", "GET", "/batches/nope", {}, 404),
    ("pause-batch", "POST", "/batches/nope/pause", {}, 404),
    ("delete-batch", "DELETE", "/batches/nope", {}, 404),
    ("list-unknown-batch", "GET", "/tasks?batch=nope", {}, 404),
    ("get-worker-id", "GET", "/workers/999999", {}, 404),
    ("get-worker-name", "GET", "/workers/nobody", {}, 404),
    ("put-worker", "PUT", "/workers/nobody", {"json": {"concurrency": 2}}, 404),
    ("delete-worker", "DELETE", "/workers/999999", {}, 404),
    ("poll-worker", "POST", "/workers/999999/poll", {"json": {"wait": 0}}, 404),
    ("report-worker", "POST", "/workers/999999/reports", {"json": {"reports": []}}, 404),
    ("get-execution", "GET", "/executions/999999", {}, 404),
    # batch names with '/'
    ("task-batch-slash", "POST", "/tasks", {"json": {"command": "x", "batch": "a/b"}}, 400),
    ("bulk-batch-slash", "POST", "/tasks/bulk", {"json": {"batch": "a/b", "tasks": [{"command": "x"}]}}, 400),
    ("create-batch-slash", "POST", "/batches", {"json": {"name": "a/b"}}, 400),
    ("worker-batch-slash", "PUT", "/workers/1", {"json": {"batch": "../etc"}}, 400),
    ("url-batch-slash", "GET", "/batches/a%2Fb", {}, 404),
    # a 10 MB command
    ("big-command", "POST", "/tasks", {"json": {"command": BIG_COMMAND}}, 400),
    ("big-bulk", "POST", "/tasks/bulk", {"json": {"tasks": [{"command": BIG_COMMAND}]}}, 400),
    ("big-put", "PUT", "/tasks/1", {"json": {"command": BIG_COMMAND}}, 400),
    ("big-wrong-type", "POST", "/tasks", {"json": {"command": [BIG_COMMAND]}}, 400),
    # query strings
    ("cursor-word", "GET", "/tasks?after=abc", {}, 400),
    ("cursor-negative", "GET", "/tasks?after=-1", {}, 400),
    ("limit-zero", "GET", "/tasks?limit=0", {}, 400),
    ("limit-big", "GET", "/tasks?limit=1001", {}, 400),
    ("limit-word", "GET", "/tasks?limit=ten", {}, 400),
    ("status-unknown", "GET", "/tasks?status=done", {}, 400),
    ("status-one-unknown", "GET", "/tasks?status=pending,done", {}, 400),
    ("output-stream", "GET", "/tasks/1/output?stream=stdin", {}, 400),
    ("output-offset", "GET", "/tasks/1/output?offset=-5", {}, 400),
]


@pytest.fixture
def seeded(app, client):
    """A finished task 1 run by worker 1, pending tasks in two batches: the state to keep."""
    run_one(app, client, "echo done", stdout=b"done\n")
    submit_many(client, ["p1", "p2"], batch="alpha")
    submit(client, "p3", name="named")
    return snapshot(client)


@pytest.mark.parametrize("method, path, kwargs, status",
                         [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_is_refused_cleanly(client, seeded, method, path, kwargs, status):
    assert_error(client.open(API + path, method=method, **kwargs), status)
    assert snapshot(client) == seeded


# --- hostile and odd input ---------------------------------------------------

HUGE = 10 ** 20       # an integer no id column can hold


@pytest.mark.parametrize("method, path, kwargs", [
    ("GET", f"/tasks/{HUGE}", {}),
    ("GET", f"/batches/{HUGE}", {}),
    ("GET", f"/workers/{HUGE}", {}),
    ("GET", f"/executions/{HUGE}", {}),
    ("POST", f"/workers/{HUGE}/poll", {"json": {"wait": 0}}),
    ("GET", f"/tasks?after={HUGE}", {}),
    ("GET", f"/tasks/1/output?offset={HUGE}", {}),
    ("POST", "/workers/1/reports", {"json": {"reports": [{"execution_id": HUGE, "status": "running"}]}}),
], ids=["task", "batch", "worker", "execution", "poll", "cursor", "output-offset", "report"])
def test_huge_integers_are_not_a_500(client, seeded, method, path, kwargs):
    r = client.open(API + path, method=method, **kwargs)
    assert r.status_code < 500, r.get_data()[:300]
    assert snapshot(client) == seeded


def test_deeply_nested_json_is_a_400(client, seeded):
    assert_error(client.post(f"{API}/tasks", **raw("[" * 100_000)), 400)
    assert snapshot(client) == seeded


def test_command_with_nul_is_refused(client, seeded):
    assert_error(client.post(f"{API}/tasks", json={"command": "echo a\u0000b"}), 400)
    assert snapshot(client) == seeded


def test_out_of_range_cpus_is_refused(client):
    assert_error(client.post(f"{API}/workers", json={"name": "big", "cpus": 10 ** 12}), 400)


def test_batch_named_with_digits_is_reachable(client):
    r = client.post(f"{API}/tasks", json={"command": "x", "batch": "2024"})
    if r.status_code == 400:       # refusing such names is a fix too
        return
    assert r.status_code == 201
    assert batch_of(client, "2024")["name"] == "2024"
    assert task_ids(client, batch="2024") == [r.get_json()["id"]]


def test_worker_named_with_digits_is_reachable(client):
    register(client, "w1")
    r = client.post(f"{API}/workers", json={"name": "7"})
    if r.status_code == 400:
        return
    assert call(client, "GET", "/workers/7")["name"] == "7"


def test_name_filter_only_star_is_a_wildcard(client):
    exact = submit(client, "x", name="a_b")["id"]
    submit(client, "x", name="axb")
    submit(client, "x", name="50%")
    submit(client, "x", name="500")
    assert task_ids(client, name="a_b") == [exact]
    assert task_ids(client, name="50%") == [exact + 2]


def test_name_filter_is_case_sensitive(client):
    lower = submit(client, "x", name="sample-1")["id"]
    submit(client, "x", name="SAMPLE-2")
    assert task_ids(client, name="sample-*") == [lower]
