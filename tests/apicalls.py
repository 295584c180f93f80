"""Calls to the API through Flask's test client, as a worker or a user makes them, for the
in-process tests (the dispatcher thread is not started: tests call dispatch() and sweep())."""
import base64

from sqlalchemy import select

from scitq.server.models import Event

API = "/api/v1"


def call(client, method, path, expect=200, **kwargs):
    r = client.open(API + path, method=method, **kwargs)
    assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.get_data()[:500]!r}"
    return r.get_json()


def submit(client, *commands, batch=None):
    body = {"tasks": [{"command": c} for c in commands], **({"batch": batch} if batch else {})}
    return call(client, "POST", "/tasks/bulk", 201, json=body)["ids"]


def register(client, name, **settings):
    return call(client, "POST", "/workers", 201, json={"name": name, **settings})["id"]


def task(client, task_id):
    return call(client, "GET", f"/tasks/{task_id}")


def execution(client, execution_id):
    return call(client, "GET", f"/executions/{execution_id}")


def executions_of(client, worker_id):
    return call(client, "GET", "/executions", query_string={"worker_id": worker_id})["items"]


def dispatch(app):
    return app.extensions["scitq"].dispatcher.dispatch()


def sweep(app):
    return app.extensions["scitq"].dispatcher.sweep()


def poll(client, worker_id, wait=0, known=(), **said):
    return call(client, "POST", f"/workers/{worker_id}/poll",
                json={"wait": wait, "known": list(known), **said})


def assign(app, client, worker_id):
    """Dispatch, then the worker's assignments as a fresh poll returns them."""
    dispatch(app)
    return poll(client, worker_id)["assignments"]


def send(client, worker_id, *reports):
    """Post reports; returns the answer {"acked": [...], "refused": [...]}."""
    return call(client, "POST", f"/workers/{worker_id}/reports", json={"reports": list(reports)})


def rep(execution_id, status, **fields):
    return {"execution_id": execution_id, "status": status, **fields}


def chunk(data, offset=0):
    return {"offset": offset, "data": base64.b64encode(data).decode()}


def acked(client, worker_id, *reports):
    answer = send(client, worker_id, *reports)
    assert answer == {"acked": [r["execution_id"] for r in reports], "refused": []}


def output(client, task_id, **params):
    r = client.get(f"{API}/tasks/{task_id}/output", query_string=params)
    assert r.status_code == 200, r.get_data()[:300]
    return r


def events(app, after=0):
    """[(kind, object_type, object_id, detail)] of the events with an id past `after`."""
    with app.extensions["scitq"].db.read() as s:
        return [(e.kind, e.object_type, e.object_id, e.detail)
                for e in s.scalars(select(Event).where(Event.id > after).order_by(Event.id))]


def last_event(app):
    with app.extensions["scitq"].db.read() as s:
        return s.scalar(select(Event.id).order_by(Event.id.desc()).limit(1)) or 0


def run_all(app, client, workers):
    """Dispatch and finish tasks until none is pending; returns {worker_id: [task ids]}."""
    done = {w: [] for w in workers}
    while dispatch(app):
        for w, capacity in workers.items():
            held = poll(client, w)["assignments"]
            assert len(held) <= capacity
            for a in held:
                acked(client, w, rep(a["execution_id"], "succeeded", return_code=0))
                done[w].append(a["task_id"])
    return done


def call_as(client, method, path, token=None, expect=200, **kwargs):
    """A call with a bearer token (none: without one), its answer's JSON (else the response)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = client.open(API + path, method=method, headers=headers, **kwargs)
    assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.get_data()[:300]!r}"
    return r.get_json() if r.is_json else r
